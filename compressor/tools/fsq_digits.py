"""Per-channel FSQ digit use of a trained model: why a 14-bit codebook carries fewer bits.

    python -m compressor.tools.fsq_digits --checkpoint runs/experiments/baseline/model.pt --input ../shared/dashcam --split val \\
        --output reports/experiments/fsq-digits-baseline.json

For each FSQ channel: the mean and spread of the pre-quantization value (after standardization for
``StandardizedFSQ``), the share beyond |z| > 2 where tanh is saturated and its gradient nearly gone, the histogram of
levels and its entropy; then the joint token entropy and the correlation between channels' digits. Every 10th frame
of each clip is used.
"""

from __future__ import annotations

import argparse

import torch
from einops import rearrange

from compressor.codec.autoencoder import load
from compressor.codec.packing import from_digits
from compressor.data.video import read_frames
from compressor.tools.evaluate import select_videos
from compressor.utils import resolve_device, to_unit, token_entropy_bits, write_json


def _entropy(counts: torch.Tensor) -> float:
    return token_entropy_bits(counts).item()


@torch.no_grad()
def fsq_digits(model, frames: torch.Tensor, batch_size: int = 32) -> dict:
    """uint8 (T, 3, H, W) -> per-channel and joint statistics of the model's FSQ digits."""
    q = model.quantizer
    zs = []
    for i in range(0, len(frames), batch_size):
        x = to_unit(frames[i : i + batch_size].to(q._levels.device))
        z = model.pre_quant(model.encoder(x))  # (B, N, C)
        z = rearrange(z, "b n c -> (b n) c")
        if hasattr(q, "norm"):  # Standardized/WhitenedFSQ: the bound sees the normalized (M, C) values
            z = q.norm(z)
        zs.append(z)
    z = torch.cat(zs)  # (M, C)
    digits = (q._bound(z).round() + q._levels // 2).long()  # (M, C) in [0, level)
    channels = []
    for c, level in enumerate(q.levels):
        counts = torch.bincount(digits[:, c], minlength=level)
        channels.append({"levels": level, "z_mean": float(z[:, c].mean()), "z_std": float(z[:, c].std()),
                         "saturated": float((z[:, c].abs() > 2).float().mean()),
                         "level_share": (counts / counts.sum()).tolist(), "entropy_bits": _entropy(counts),
                         "max_bits": float(torch.tensor(float(level)).log2())})
    tokens = from_digits(digits, q.levels)
    return {"tokens": len(tokens), "channels": channels,
            "sum_of_channel_entropies_bits": sum(c["entropy_bits"] for c in channels),
            "joint_entropy_bits": _entropy(torch.bincount(tokens, minlength=q.codebook_size)),
            "codes_used": int(tokens.unique().numel()), "codebook_size": q.codebook_size,
            "digit_correlation": torch.corrcoef(digits.T.double()).tolist()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.fsq_digits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="model.pt, a train.py .ckpt or a Hub folder")
    ap.add_argument("--input", nargs="+", default=["../shared/dashcam"], help="video directories with MANIFEST.tsv")
    ap.add_argument("--split", default="val")
    ap.add_argument("--frame-stride", type=int, default=10)
    ap.add_argument("--output", default=None, help="JSON file")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    args = ap.parse_args(argv)
    model = load(args.checkpoint, map_location=resolve_device(args.device))
    frames = torch.cat([read_frames(v, model.image_size)[:: args.frame_stride]
                        for v in select_videos(args.input, args.split)])
    stats = fsq_digits(model, frames, args.batch_size)
    for c, ch in enumerate(stats["channels"]):
        print(f"channel {c}: {ch['levels']} levels, z {ch['z_mean']:+.2f} ± {ch['z_std']:.2f}, "
              f"{ch['saturated']:.0%} saturated, {ch['entropy_bits']:.2f} of {ch['max_bits']:.2f} bits, "
              f"levels {[round(s, 2) for s in ch['level_share']]}")
    print(f"{stats['tokens']} tokens: channel entropies sum to {stats['sum_of_channel_entropies_bits']:.2f} bits, "
          f"joint {stats['joint_entropy_bits']:.2f} bits, {stats['codes_used']} of {stats['codebook_size']} codes used")
    if args.output:
        write_json(args.output, {"checkpoint": args.checkpoint, "split": args.split, **stats})


if __name__ == "__main__":
    main()
