"""Video tokens on real video: PSNR against bytes per frame on every frame of the given clips.

    python -m compressor.tools.evaluate_video --checkpoint runs/video-224B/video.pt --input ../shared/dashcam \\
        --split val --gop 8 --output reports/video/video-224B

Any codec ``compressor.load`` reads (``video.pt``, a decoder that remembers, ``remembering.pt``, a per-frame
``model.pt``, their Hub folders) is scored through the clip API (``compressor.codec.clips``), as ``evaluate`` scores
it: for each clip, every frame is coded in order in its groups (for a video codec, groups of each ``--gop``: an intra
frame by the per-frame model, then conditional frames), packed at its type's bits and decoded from what was unpacked,
and compared with the same clip coded frame by frame by the intra model alone (the per-frame tokens at their own
bytes). ``report.json`` holds per-clip PSNR of both, the clip mean, PSNR by position in the group (mean over every
group of every clip: does error drift?), bytes per frame, encode frames/s, and the clips skipped because they do not
decode (``skipped``: name -> reason). With one group length (always so for a codec without conditional frames), the
clip means and clips are also at the top of the report.

    python -m compressor.tools.evaluate_video plot --input reports/video/*/report.json \
        --baseline reports/eval-val4/report.json --output reports/video/rd.png

draws PSNR against bytes per frame: each video report's point and its intra-only point, and the classical curves
(x265 inter-frame, WebP thumbnails) of a ``compressor.tools.evaluate --compare`` report on the same clips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from tqdm import tqdm

from compressor.codec.clips import clip_codec
from compressor.codec.packing import frame_types
from compressor.codec.video import MAX_GOP, load_codec
from compressor.data.video import read_frames
from compressor.metrics import frame_psnr
from compressor.tools.evaluate import codec_roundtrip, select_videos
from compressor.utils import write_json


def evaluate_clip(codec, frames: torch.Tensor) -> dict:
    """frames: uint8 (T, 3, H, W) of one clip -> PSNR, packed bytes and place in its group of each frame as ``codec``
    codes it, and encode seconds, through ``evaluate.codec_roundtrip`` (the clip API; each frame packed at its type's
    bits, decoded from what was unpacked)."""
    r = codec_roundtrip(codec, frames)
    return {"psnr": frame_psnr(r["recon"], frames).tolist(), "bytes": r["bytes"], "encode_seconds": r["encode_s"],
            "position": group_positions(frame_types(len(frames), codec.gop))}


def group_positions(types: str) -> list[int]:
    """Each frame's place in its group (0 at an intra frame), from the frame types of a clip."""
    positions, t = [], 0
    for kind in types:
        t = 0 if kind == "I" else t + 1
        positions.append(t)
    return positions


def clip_names(paths: list[str]) -> dict[str, str]:
    """{path: its name in reports}: the path relative to the clips' common folder, so that two clips of one file
    name (``a/clip.mp4``, ``b/clip.mp4``) are two clips; a clip's file name when they share one folder."""
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return {p: os.path.relpath(os.path.abspath(p), root) for p in paths}


def summarize(clips: dict[str, dict], gop: int) -> dict:
    by_position: list[list[float]] = [[] for _ in range(gop)]
    for r in clips.values():
        for t, p in zip(r["position"], r["psnr"]):
            by_position[t].append(p)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    frames = sum(len(r["psnr"]) for r in clips.values())
    return {
        "psnr_clip_mean": mean([mean(r["psnr"]) for r in clips.values()]),
        "intra_only_psnr_clip_mean": mean([mean(r["intra_psnr"]) for r in clips.values()]),
        "bytes_per_frame": sum(sum(r["bytes"]) for r in clips.values()) / frames,
        "psnr_by_position": [mean(p) if p else None for p in by_position],
        "encode_fps": frames / sum(r["encode_seconds"] for r in clips.values()),
        "frames": frames,
    }


def plot(reports: list[str], baseline: str | None, output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if baseline:
        with open(baseline) as f:
            rd = json.load(f)["comparison"]["rd"]
        for name in ("hevc (x265, inter)", "webp (downscaled)"):  # the classical references at token budgets
            near = sorted(p for p in rd.get(name, []) if p[0] <= 700)
            if near:
                xs, ys = zip(*near)
                ax.plot(xs, ys, "--", marker=".", label=f"{name}, every 10th val frame (frame mean)")
    intra_done = False
    for path in reports:
        with open(path) as f:
            r = json.load(f)
        for gop, s in r["gops"].items():
            label = f"video, {r['inter_tokens']} tokens/conditional frame, gop {gop}"
            ax.plot([s["bytes_per_frame"]], [s["psnr_clip_mean"]], "o", ms=9, mfc="none", mew=2, label=label)
            if not intra_done:
                ax.plot([r["intra_bytes"]], [s["intra_only_psnr_clip_mean"]], "ks", ms=5, label="per-frame tokens")
                intra_done = True
    ax.set_xlabel("bytes per frame")
    ax.set_ylabel("PSNR (dB), val clip mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        pp = argparse.ArgumentParser(prog="python -m compressor.tools.evaluate_video plot")
        pp.add_argument("--input", nargs="+", required=True, help="report.json files of video models")
        pp.add_argument("--baseline", default=None, help="compressor.tools.evaluate report with a comparison")
        pp.add_argument("--output", required=True, help="PNG")
        a = pp.parse_args(argv[1:])
        plot(a.input, a.baseline, a.output)
        return 0
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.evaluate_video", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a codec file or Hub folder (video.pt, remembering.pt, "
                    "model.pt)")
    ap.add_argument("--input", nargs="+", default=["../shared/dashcam"], help="videos, folders or globs")
    ap.add_argument("--split", default="val", help="keep only videos with this split in MANIFEST.tsv")
    ap.add_argument("--gop", type=int, nargs="+", default=[8], help="group lengths to measure (1: intra only) for a "
                    "codec with conditional frames; a codec without them is measured as it is")
    ap.add_argument("--output", required=True, help="report folder (report.json)")
    args = ap.parse_args(argv)
    if not all(1 <= gop <= MAX_GOP for gop in args.gop):
        ap.error(f"--gop must be in [1, {MAX_GOP}], got {args.gop}")
    try:
        codec = clip_codec(load_codec(args.checkpoint))
    except (ValueError, OSError, TypeError) as e:  # not a codec file or folder this package reads: say so, no traceback
        ap.error(f"--checkpoint {args.checkpoint}: {e}")
    with torch.no_grad():  # not set_grad_enabled(False): a caller in the same process (a test run) trains after it
        return _evaluate(args, codec)


def _evaluate(args: argparse.Namespace, codec) -> int:
    videos = select_videos(args.input, args.split)
    os.makedirs(args.output, exist_ok=True)
    intra = clip_codec(codec.intra)  # each frame coded alone: the control of every codec
    # Only a codec with conditional frames has a group length to vary; any other is measured in its own groups.
    gops = args.gop if "P" in codec.frame_formats() else [codec.gop]
    frames, skipped = {}, {}
    for v, name in tqdm(clip_names(videos).items(), desc="read"):
        try:
            frames[name] = read_frames(v, codec.image_size)
        except Exception as e:  # damaged or not a video: skipped and recorded, never fatal
            print(f"warning: skipping {name}: {e}", file=sys.stderr)
            skipped[name] = f"{type(e).__name__}: {e}"
    if not frames:
        raise SystemExit(f"no clip of {args.input} decodes ({len(skipped)} skipped): nothing to evaluate")
    alone = {name: frame_psnr(codec_roundtrip(intra, f)["recon"], f).tolist() for name, f in frames.items()}
    report = {"checkpoint": args.checkpoint, "split": args.split, "intra_bytes": intra.bytes_per_frame,
              "inter_bytes": codec.frame_formats().get("P", {}).get("bytes_per_frame"),
              "inter_tokens": codec.frame_formats().get("P", {}).get("num_tokens"), "gops": {}, "skipped": skipped}
    if hasattr(codec, "history"):  # a decoder that remembers: how many earlier frames it reads
        report["history"] = codec.history
    for gop in gops:
        codec.gop = gop
        clips = {name: {**evaluate_clip(codec, f), "intra_psnr": alone[name]}
                 for name, f in tqdm(frames.items(), desc=f"gop {gop}")}
        report["gops"][str(gop)] = {**summarize(clips, gop), "clips": {
            name: {"psnr": sum(r["psnr"]) / len(r["psnr"]), "intra_psnr": sum(r["intra_psnr"]) / len(r["intra_psnr"]),
                   "frames": len(r["psnr"])} for name, r in clips.items()}}
        s = report["gops"][str(gop)]
        print(f"gop {gop}: {s['psnr_clip_mean']:.2f} dB at {s['bytes_per_frame']:.1f} B/frame (intra only "
              f"{s['intra_only_psnr_clip_mean']:.2f} dB at {intra.bytes_per_frame} B); by position "
              + " ".join(f"{p:.2f}" for p in s["psnr_by_position"] if p is not None))
    if len(gops) == 1:  # one measurement (always so without conditional frames): also at the top, as reports had it
        only = report["gops"][str(gops[0])]
        report.update({k: only[k] for k in ("bytes_per_frame", "psnr_clip_mean", "intra_only_psnr_clip_mean",
                                            "clips")})
    write_json(os.path.join(args.output, "report.json"), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
