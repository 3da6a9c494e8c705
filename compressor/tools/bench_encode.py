"""Benchmark the encode pipeline: decode-only, model-only and end-to-end frames/s, in one run on one machine.

    python -m compressor.tools.bench_encode --checkpoint runs/x/model.pt --input ../shared/dashcam

The pipeline overlaps decoding (worker processes) with inference (main process), so end-to-end should approach
the slower of the two stages rather than their sum. Peak resident memory of the end-to-end run is reported too.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from compressor.codec.autoencoder import load
from compressor.latents.pipeline import DecodedChunks, encode_videos, find_videos


def decode_only(videos: list[str], image_size, batch_size: int, workers: int) -> tuple[float, list[torch.Tensor]]:
    loader = DataLoader(DecodedChunks(videos, image_size, batch_size, 60.0, None), batch_size=None,
                        num_workers=workers, prefetch_factor=4 if workers else None)
    t0, n, sample = time.perf_counter(), 0, []
    for chunk in loader:
        n += len(chunk.frames)
        if len(sample) < 4 and len(chunk.frames) == batch_size:
            sample.append(chunk.frames)
    return n / (time.perf_counter() - t0), sample


def model_only(model, batches: list[torch.Tensor], device: str, repeats: int = 3) -> float:
    model.encode(batches[0].to(device))  # warm-up
    t0, n = time.perf_counter(), 0
    for _ in range(repeats):
        for b in batches:
            model.encode(b.to(device))
            n += len(b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", required=True, nargs="+")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    model = load(args.checkpoint).to(args.device)
    videos, _ = find_videos(args.input)
    dec_fps, sample = decode_only(videos, model.image_size, args.batch_size, args.workers)
    enc_fps = model_only(model, sample, args.device)
    with tempfile.TemporaryDirectory() as out:
        summary = encode_videos(model, args.input, out, batch_size=args.batch_size, num_workers=args.workers,
                                device=args.device, progress=False)
    e2e = summary["frames_per_s"]
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    slower = min(dec_fps, enc_fps)
    print(f"| stage | frames/s |\n|---|---:|\n| decode + preprocess only ({args.workers} workers) | {dec_fps:.1f} |\n"
          f"| model encode only ({args.device}, batch {args.batch_size}) | {enc_fps:.1f} |\n"
          f"| end to end ({summary['frames']} frames, {len(videos)} videos) | {e2e:.1f} |\n\n"
          f"end to end = {e2e / slower:.0%} of the slower stage; peak RSS {peak_mb:.0f} MB; "
          f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
