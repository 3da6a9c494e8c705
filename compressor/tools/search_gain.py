"""What encode-time token search buys: PSNR and encode speed of one model with and without it, on real clips.

    python -m compressor.tools.search_gain --checkpoint runs/experiments/NAME/model.pt --input ../shared/dashcam \\
        --split val --steps 0 10 20 --output reports/search-NAME

Every ``--frame-stride``-th frame of each clip goes through ``encode(frames, search_steps=S)`` and ``decode`` for
each S in ``--steps`` (0 is plain ``encode``): the same frames, model, format and bytes for every row. Writes
``report.json`` and ``report.md`` (per-clip PSNR, the clip mean, the gain over plain encoding, encode frames/s).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from tqdm import tqdm

from compressor.benchmark import sync, write_report
from compressor.codec.autoencoder import load
from compressor.data.video import read_frames
from compressor.metrics import frame_psnr
from compressor.tools.evaluate import select_videos
from compressor.utils import resolve_device


def measure(model, clips: dict[str, torch.Tensor], steps: list[int], lr: float, batch_size: int) -> list[dict]:
    """One row per search length: PSNR per clip (uint8 frames, every given frame), clip mean, encode frames/s."""
    device = model.pre_quant.weight.device
    rows = []
    for s in steps:
        psnr, seconds, frames_done = {}, 0.0, 0
        for name, frames in tqdm(clips.items(), desc=f"search {s} steps", unit="clip"):
            scores = []
            for i in range(0, len(frames), batch_size):
                batch = frames[i : i + batch_size].to(device)
                t0 = time.perf_counter()
                tokens = model.encode(batch, search_steps=s, search_lr=lr)
                sync(device)
                seconds += time.perf_counter() - t0
                scores.append(frame_psnr(model.decode(tokens), batch).cpu())
            psnr[name] = torch.cat(scores).mean().item()
            frames_done += len(frames)
        rows.append({"steps": s, "clips": psnr, "psnr_clip_mean": sum(psnr.values()) / len(psnr),
                     "encode_fps": frames_done / seconds})
    for row in rows:
        row["gain_db"] = row["psnr_clip_mean"] - rows[0]["psnr_clip_mean"]
    return rows


def to_markdown(report: dict) -> str:
    clips = list(report["rows"][0]["clips"])
    short = [c.split("__")[-1].removesuffix(".mp4") for c in clips]
    lines = [f"Token search on `{report['checkpoint']}`: every {report['frame_stride']}th frame of "
             f"{len(clips)} clips ({report['frames']} frames), lr {report['lr']}, {report['machine']}.", "",
             "| search steps | " + " | ".join(short) + " | clip mean | gain (dB) | encode frames/s |",
             "|---:|" + "---:|" * len(clips) + "---:|---:|---:|"]
    for r in report["rows"]:
        cells = " | ".join(f"{r['clips'][c]:.2f}" for c in clips)
        lines.append(f"| {r['steps']} | {cells} | **{r['psnr_clip_mean']:.2f}** | {r['gain_db']:+.2f} | "
                     f"{r['encode_fps']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.search_gain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="model.pt, a train.py .ckpt or a Hub folder (FSQ models)")
    ap.add_argument("--input", required=True, nargs="+", help="video directories, globs or files")
    ap.add_argument("--split", default=None, help="keep only videos with this split in MANIFEST.tsv (e.g. val)")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 10, 20], help="search lengths; 0 is plain encode")
    ap.add_argument("--lr", type=float, default=0.15, help="Adam step on the FSQ digits, in levels")
    ap.add_argument("--frame-stride", type=int, default=10, help="every n-th frame of each clip")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--output", default=None, help="directory for report.json and report.md")
    args = ap.parse_args(argv)
    steps = sorted(set(args.steps) | {0})
    device = resolve_device(args.device)
    model = load(args.checkpoint, map_location=device)
    clips = {os.path.basename(v): read_frames(v, model.image_size, args.frame_stride)
             for v in select_videos(args.input, args.split)}
    report = {"checkpoint": args.checkpoint, "frame_stride": args.frame_stride, "lr": args.lr,
              "frames": sum(len(f) for f in clips.values()), "batch_size": args.batch_size,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}",
              "rows": measure(model, clips, steps, args.lr, args.batch_size)}
    md = to_markdown(report)
    print(md)
    if args.output:
        write_report(args.output, "report", report, md)


if __name__ == "__main__":
    main()
