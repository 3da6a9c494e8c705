"""Video tokens on real video: PSNR against bytes per frame on every frame of the given clips.

    python -m compressor.tools.evaluate_video --checkpoint runs/video-224B/video.pt --input ../shared/dashcam \\
        --split val --gop 8 --output reports/video/video-224B

For each clip, every frame is coded in order in groups of ``gop`` (an intra frame by the per-frame model, then
conditional frames), and compared with the same clip coded frame by frame by the intra model alone (the per-frame
tokens at their own bytes). ``report.json`` holds per-clip PSNR of both, the clip mean, PSNR by position in the
group (mean over every group of every clip: does error drift?), bytes per frame and encode frames/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from tqdm import tqdm

from compressor.codec.video import VideoCodec, load_video
from compressor.data.video import read_frames
from compressor.metrics import frame_psnr
from compressor.tools.evaluate import select_videos
from compressor.utils import atomic_write


def evaluate_clip(codec: VideoCodec, frames: torch.Tensor) -> dict:
    """frames: uint8 (T, 3, H, W) of one clip -> PSNR per frame of the video codec and of the intra model alone."""
    t0 = time.perf_counter()
    tokens, recon = codec.encode_clip(frames)
    seconds = time.perf_counter() - t0
    intra_recon = torch.cat([codec.intra.decode(codec.intra.encode(frames[i : i + 32]))
                             for i in range(0, len(frames), 32)])
    bits = [len(t) * (codec.intra.bits_per_token if i % codec.gop == 0 else codec.inter.bits_per_token)
            for i, t in enumerate(tokens)]
    return {"psnr": frame_psnr(recon, frames).tolist(), "intra_psnr": frame_psnr(intra_recon, frames).tolist(),
            "bytes": [-(-b // 8) for b in bits], "encode_seconds": seconds}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.evaluate_video", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="video codec file (video.pt from train.py)")
    ap.add_argument("--input", nargs="+", default=["../shared/dashcam"], help="videos, folders or globs")
    ap.add_argument("--split", default="val", help="keep only videos with this split in MANIFEST.tsv")
    ap.add_argument("--gop", type=int, nargs="+", default=[8], help="group lengths to measure (1: intra only)")
    ap.add_argument("--output", required=True, help="report folder (report.json)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    videos = select_videos(args.input, args.split)
    codec = load_video(args.checkpoint)
    frames = {os.path.basename(v): read_frames(v, codec.intra.image_size) for v in tqdm(videos, desc="read")}
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
    with atomic_write(os.path.join(args.output, "report.json")) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
