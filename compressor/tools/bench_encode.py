"""Benchmark the encode pipeline: decode-only, model-only and end-to-end frames/s, in one run on one machine.

    python -m compressor.tools.bench_encode --checkpoint runs/x/model.pt --input ../shared/dashcam

The pipeline overlaps decoding (worker processes) with inference (main process), so end-to-end should approach
the slower of the two stages rather than their sum. Peak resident memory of the end-to-end run is reported too.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from compressor.benchmark import peak_rss_mb, seconds_per_call, write_report
from compressor.codec.autoencoder import load
from compressor.latents.pipeline import DecodedChunks, encode_videos, find_videos
from compressor.utils import resolve_device


def decode_only(videos: list[str], image_size, batch_size: int, workers: int) -> tuple[float, list[torch.Tensor]]:
    loader = DataLoader(DecodedChunks(videos, image_size, batch_size, 60.0, None), batch_size=None,
                        num_workers=workers, prefetch_factor=4 if workers else None)
    t0, n, sample = time.perf_counter(), 0, []
    for chunk in loader:
        n += len(chunk.frames)
        if len(sample) < 4 and len(chunk.frames) == batch_size:
            sample.append(chunk.frames)
    return n / (time.perf_counter() - t0), sample


def model_only(model, batches: list[torch.Tensor], device: str, min_time: float = 2.0) -> float:
    """Frames/s of ``model.encode`` over the sample batches (host-to-device copies included)."""

    def encode_all():
        for b in batches:
            model.encode(b.to(device))

    return sum(map(len, batches)) / seconds_per_call(encode_all, min_time)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.bench_encode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="model.pt, a train.py .ckpt or a Hub folder")
    ap.add_argument("--input", required=True, nargs="+", help="videos: directories, globs or files")
    ap.add_argument("--output", default=None, help="directory for bench-encode.json and bench-encode.md")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="decode worker processes")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    args = ap.parse_args(argv)
    args.device = resolve_device(args.device)
    model = load(args.checkpoint, map_location=args.device)
    videos, _ = find_videos(args.input)
    dec_fps, sample = decode_only(videos, model.image_size, args.batch_size, args.workers)
    enc_fps = model_only(model, sample, args.device)
    with tempfile.TemporaryDirectory() as out:
        summary = encode_videos(model, args.input, out, batch_size=args.batch_size, num_workers=args.workers,
                                device=args.device, progress=False)
    e2e = summary["frames_per_s"]
    peak_mb = peak_rss_mb(children=True)
    slower = min(dec_fps, enc_fps)
    md = (f"| stage | frames/s |\n|---|---:|\n| decode + preprocess only ({args.workers} workers) | {dec_fps:.1f} |\n"
          f"| model encode only ({args.device}, batch {args.batch_size}) | {enc_fps:.1f} |\n"
          f"| end to end ({summary['frames']} frames, {len(videos)} videos) | {e2e:.1f} |\n\n"
          f"end to end = {e2e / slower:.0%} of the slower stage; peak RSS {peak_mb:.0f} MB; "
          f"{torch.get_num_threads()} torch threads\n")
    print(md)
    if args.output:
        write_report(args.output, "bench-encode", {
            "device": args.device, "batch_size": args.batch_size, "workers": args.workers, "videos": len(videos),
            "frames": summary["frames"], "decode_fps": dec_fps, "encode_fps": enc_fps, "end_to_end_fps": e2e,
            "peak_rss_mb": peak_mb, "threads": torch.get_num_threads()}, md)

if __name__ == "__main__":
    main()
