"""Video tokens on real video: PSNR against bytes per frame on every frame of the given clips.

    python -m compressor.tools.evaluate_video --checkpoint runs/video-224B/video.pt --input ../shared/dashcam \\
        --split val --gop 8 --output reports/video/video-224B

For each clip, every frame is coded in order in groups of ``gop`` (an intra frame by the per-frame model, then
conditional frames), and compared with the same clip coded frame by frame by the intra model alone (the per-frame
tokens at their own bytes). ``report.json`` holds per-clip PSNR of both, the clip mean, PSNR by position in the
group (mean over every group of every clip: does error drift?), bytes per frame and encode frames/s.

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
import time

import torch
from tqdm import tqdm

from compressor.codec.checkpoint import read_checkpoint
from compressor.codec.remember import REMEMBERING_FORMAT, load_remembering
from compressor.codec.video import MAX_GOP, VideoCodec, load_video
from compressor.data.video import read_frames
from compressor.metrics import frame_psnr
from compressor.tools.evaluate import select_videos
from compressor.utils import batched, write_json


def evaluate_clip(codec: VideoCodec, frames: torch.Tensor) -> dict:
    """frames: uint8 (T, 3, H, W) of one clip -> PSNR per frame of the video codec and of the intra model alone."""
    t0 = time.perf_counter()
    tokens, recon = codec.encode_clip(frames)
    seconds = time.perf_counter() - t0
    intra_recon = batched(lambda f: codec.intra.decode(codec.intra.encode(f)), frames, size=32)
    bits = [len(t) * (codec.intra.bits_per_token if i % codec.gop == 0 else codec.inter.bits_per_token)
            for i, t in enumerate(tokens)]
    return {"psnr": frame_psnr(recon, frames).tolist(), "intra_psnr": frame_psnr(intra_recon, frames).tolist(),
            "bytes": [-(-b // 8) for b in bits], "encode_seconds": seconds}


def clip_names(paths: list[str]) -> dict[str, str]:
    """{path: its name in reports}: the path relative to the clips' common folder, so that two clips of one file
    name (``a/clip.mp4``, ``b/clip.mp4``) are two clips; a clip's file name when they share one folder."""
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return {p: os.path.relpath(os.path.abspath(p), root) for p in paths}


def evaluate_remembering(paths: list[str], checkpoint: str) -> dict:
    """The per-frame tokens of every frame of ``paths`` decoded alone and with the frames before them."""
    intra, decoder = load_remembering(checkpoint)
    clips, names = {}, clip_names(paths)
    for path in tqdm(paths, desc="remembering decoder"):
        frames = read_frames(path, intra.image_size)
        tokens = batched(intra.encode, frames, size=32)
        alone = batched(intra.decode, tokens, size=32)
        clips[names[path]] = {"psnr": frame_psnr(decoder.decode_clip(tokens), frames).mean().item(),
                                         "intra_psnr": frame_psnr(alone, frames).mean().item(),
                                         "frames": len(frames)}
    mean = lambda key: sum(c[key] for c in clips.values()) / len(clips)  # noqa: E731
    return {"checkpoint": checkpoint, "history": decoder.history, "bytes_per_frame": intra.bytes_per_frame,
            "psnr_clip_mean": mean("psnr"), "intra_only_psnr_clip_mean": mean("intra_psnr"), "clips": clips}


def summarize(clips: dict[str, dict], gop: int) -> dict:
    by_position: list[list[float]] = [[] for _ in range(gop)]
    for r in clips.values():
        for t, p in enumerate(r["psnr"]):
            by_position[t % gop].append(p)
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
    ap.add_argument("--checkpoint", required=True, help="video codec file (video.pt from train.py)")
    ap.add_argument("--input", nargs="+", default=["../shared/dashcam"], help="videos, folders or globs")
    ap.add_argument("--split", default="val", help="keep only videos with this split in MANIFEST.tsv")
    ap.add_argument("--gop", type=int, nargs="+", default=[8], help="group lengths to measure (1: intra only)")
    ap.add_argument("--output", required=True, help="report folder (report.json)")
    args = ap.parse_args(argv)
    if not all(1 <= gop <= MAX_GOP for gop in args.gop):
        ap.error(f"--gop must be in [1, {MAX_GOP}], got {args.gop}")
    with torch.no_grad():  # not set_grad_enabled(False): a caller in the same process (a test run) trains after it
        return _evaluate(args)


def _evaluate(args) -> int:
    videos = select_videos(args.input, args.split)
    os.makedirs(args.output, exist_ok=True)
    blob = read_checkpoint(args.checkpoint)  # a clear ValueError for anything that is not weights-only torch data
    if isinstance(blob, dict) and blob.get("format") == REMEMBERING_FORMAT:
        report = evaluate_remembering(videos, args.checkpoint)
        print(f"remembering decoder: {report['psnr_clip_mean']:.2f} dB, the same tokens decoded alone "
              f"{report['intra_only_psnr_clip_mean']:.2f} dB ({report['bytes_per_frame']} B/frame)")
        write_json(os.path.join(args.output, "report.json"), report)
        return 0
    codec = load_video(args.checkpoint)
    frames = {name: read_frames(v, codec.intra.image_size) for v, name in tqdm(clip_names(videos).items(), desc="read")}
    report = {"checkpoint": args.checkpoint, "split": args.split, "intra_bytes": codec.intra.bytes_per_frame,
              "inter_bytes": codec.inter.bytes_per_frame, "inter_tokens": codec.inter.num_tokens, "gops": {}}
    for gop in args.gop:
        codec.gop = gop
        clips = {name: evaluate_clip(codec, f) for name, f in tqdm(frames.items(), desc=f"gop {gop}")}
        report["gops"][str(gop)] = {**summarize(clips, gop), "clips": {
            name: {"psnr": sum(r["psnr"]) / len(r["psnr"]), "intra_psnr": sum(r["intra_psnr"]) / len(r["intra_psnr"]),
                   "frames": len(r["psnr"])} for name, r in clips.items()}}
        s = report["gops"][str(gop)]
        print(f"gop {gop}: {s['psnr_clip_mean']:.2f} dB at {s['bytes_per_frame']:.1f} B/frame (intra only "
              f"{s['intra_only_psnr_clip_mean']:.2f} dB at {codec.intra.bytes_per_frame} B); by position "
              + " ".join(f"{p:.2f}" for p in s["psnr_by_position"] if p is not None))
    os.makedirs(args.output, exist_ok=True)
    write_json(os.path.join(args.output, "report.json"), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
