"""Evaluate a trained compressor on video clips through the codec API.

    python -m compressor.evaluate --checkpoint runs/x/model.pt --input ../shared/dashcam --split val --output reports/x

Every frame goes preprocess -> encode -> pack -> unpack -> decode, so the numbers are those a user of the
checkpoint gets. Writes ``report.json`` and ``report.md`` (per clip and overall) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from compressor.autoencoder import Autoencoder, load
from compressor.losses import ms_ssim_01
from compressor.packing import pack, unpack
from compressor.video import iter_frames, list_videos, preprocess, read_manifest


def frame_psnr(recon: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) pair -> PSNR in dB per frame, (B,)."""
    mse = (recon.float() - frames.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def frame_ms_ssim(recon: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) pair -> MS-SSIM per frame, (B,)."""
    return ms_ssim_01(recon.float() / 127.5 - 1, frames.float() / 127.5 - 1)


def evaluate_clip(model: Autoencoder, path: str, batch_size: int = 32) -> dict:
    """Per-frame metrics of one clip, plus token counts for codebook statistics."""
    psnrs, ssims, counts = [], [], torch.zeros(model.codebook_size, dtype=torch.float64)
    n_bytes, enc_s, dec_s, batch = 0, 0.0, 0.0, []

    def flush():
        nonlocal n_bytes, enc_s, dec_s
        frames = torch.stack(batch)
        t0 = time.perf_counter()
        tokens = model.encode(frames)
        t1 = time.perf_counter()
        data = pack(tokens, bits=model.bits_per_token)
        recon = model.decode(unpack(data, len(frames), model.num_tokens, model.bits_per_token))
        t2 = time.perf_counter()
        enc_s, dec_s, n_bytes = enc_s + t1 - t0, dec_s + t2 - t1, n_bytes + len(data)
        psnrs.append(frame_psnr(recon, frames))
        ssims.append(frame_ms_ssim(recon, frames))
        counts.add_(torch.bincount(tokens.flatten().cpu(), minlength=model.codebook_size).double())
        batch.clear()

    for frame in iter_frames(path):
        batch.append(preprocess(frame, model.image_size))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    psnr, ssim = torch.cat(psnrs), torch.cat(ssims)
    return {"clip": os.path.basename(path), "frames": len(psnr), "psnr": psnr.mean().item(),
            "ms_ssim": ssim.mean().item(), "bytes_per_frame": n_bytes / len(psnr),
            "encode_fps": len(psnr) / enc_s, "decode_fps": len(psnr) / dec_s, "_counts": counts}


def token_stats(counts: torch.Tensor) -> dict:
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"codebook_usage": (counts > 0).double().mean().item(), "token_entropy_bits": -(nz * nz.log2()).sum().item()}


def evaluate(model: Autoencoder, videos: list[str], batch_size: int = 32) -> dict:
    clips = [evaluate_clip(model, v, batch_size) for v in videos]
    total = sum(c["frames"] for c in clips)
    counts = sum(c.pop("_counts") for c in clips)
    overall = {
        "frames": total,
        # Frame-weighted means, and the unweighted clip mean, since clips differ a lot in length.
        "psnr": sum(c["psnr"] * c["frames"] for c in clips) / total,
        "psnr_clip_mean": sum(c["psnr"] for c in clips) / len(clips),
        "ms_ssim": sum(c["ms_ssim"] * c["frames"] for c in clips) / total,
        "bytes_per_frame": sum(c["bytes_per_frame"] * c["frames"] for c in clips) / total,
        **token_stats(counts),
        "encode_fps": total / sum(c["frames"] / c["encode_fps"] for c in clips),
        "decode_fps": total / sum(c["frames"] / c["decode_fps"] for c in clips),
    }
    return {"clips": clips, "overall": overall}


def to_markdown(report: dict, title: str) -> str:
    rows = [f"## {title}", "", "| clip | frames | PSNR (dB) | MS-SSIM | bytes/frame |", "|---|---:|---:|---:|---:|"]
    for c in report["clips"]:
        rows.append(f"| {c['clip']} | {c['frames']} | {c['psnr']:.2f} | {c['ms_ssim']:.4f} | {c['bytes_per_frame']:.0f} |")
    o = report["overall"]
    rows.append(f"| **all (frame-weighted)** | {o['frames']} | {o['psnr']:.2f} | {o['ms_ssim']:.4f} | "
                f"{o['bytes_per_frame']:.0f} |")
    rows += ["", f"codebook usage {o['codebook_usage']:.1%}, token entropy {o['token_entropy_bits']:.2f} bits/token, "
             f"encode {o['encode_fps']:.1f} frames/s, decode {o['decode_fps']:.1f} frames/s "
             f"(batch {report.get('batch_size')}, {report.get('device')}, {report.get('threads')} threads)", ""]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="model.pt or a train.py .ckpt")
    ap.add_argument("--input", required=True, nargs="+", help="video directories, globs or files")
    ap.add_argument("--split", default=None, help="keep only videos with this split in MANIFEST.tsv (e.g. val)")
    ap.add_argument("--output", default=None, help="directory for report.json and report.md")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    videos = list_videos(args.input)
    if args.split:
        videos = [v for v in videos
                  if read_manifest(os.path.dirname(os.path.abspath(v))).get(os.path.basename(v)) == args.split]
        if not videos:
            raise SystemExit(f"no videos with split {args.split!r} in a MANIFEST.tsv under {args.input}")
    model = load(args.checkpoint)
    report = evaluate(model, videos, args.batch_size)
    report.update(checkpoint=args.checkpoint, split=args.split, batch_size=args.batch_size, device="cpu",
                  threads=torch.get_num_threads(),
                  params={"encoder": _count(model.encoder), "decoder": _count(model.decoder),
                          "total": _count(model)})
    md = to_markdown(report, f"{args.checkpoint} on {args.split or 'all'} clips")
    print(md)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.output, "report.md"), "w") as f:
            f.write(md)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    main()
