"""ViT versus convolution: speed of the three designs at three input sizes, at the same 128-token budget.

    python -m compressor.tools.bench --device cpu --output reports/bench     # CPU (all cores torch sees)
    python -m compressor.tools.bench --output reports/bench-gpu             # --device auto: CUDA when there is one

Designs (codec API: uint8 frames -> tokens -> uint8 frames):

- ``vit``: pure ViT, patchify + transformer in the encoder, transformer + linear unpatchify in the decoder;
- ``convstem``: strided-conv stem + transformer, transformer + pixel-shuffle conv head;
- ``conv``: convolutions only (stride-2 stages + residual blocks), no attention.

At 128x256 each is its ``configs/cpu-*-224B.yaml`` model, resolved on ``configs/base.yaml`` by the parser
``train.py`` uses (``compressor.training.cli.resolve``). Larger inputs keep 128 tokens of 14 bits (224 bytes):
the ViT's patch grows (32, 64 px), and the convolutional designs gain stride-2 stages (narrow ones, at the new
high resolutions). Measured per design and size: parameters, FLOPs per frame (``torch.utils.flop_counter``:
matmuls, convolutions, attention), encode + decode latency at batch 1, the best throughput over batch sizes, and
peak memory at batch 16 above the loaded model (CUDA: allocator peak; CPU: process RSS high-water in a fresh
process). Each case runs in its own process so memory peaks do not mix. Writes ``bench.json``, ``bench.md``
and ``bench.png``.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.utils.flop_counter import FlopCounterMode

from compressor.benchmark import (device_name, peak_rss_mb, rss_mb, run_isolated, seconds_per_call, sync,
                                  write_report)
from compressor.codec.autoencoder import Autoencoder
from compressor.training.cli import CONFIGS, autoencoder_from, resolve
from compressor.utils import num_params, resolve_device

RESOLUTIONS = ((128, 256), (256, 512), (512, 1024))
DESIGNS = {"vit": "cpu-vit-224B.yaml", "convstem": "cpu-convstem-224B.yaml", "conv": "cpu-conv-224B.yaml"}


def build(design: str, image_size: tuple[int, int]) -> Autoencoder:
    """The design's CPU config at 128x256 (resolved as ``train.py`` resolves it), with the grid stride scaled so
    every size gives 128 tokens."""
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {DESIGNS}")
    config = resolve(["--config", os.path.join(CONFIGS, DESIGNS[design])])
    extra = {128: 0, 256: 1, 512: 2}[image_size[0]]  # extra x2 downsampling stages beyond 16 px
    encoder, decoder = config.model.encoder.init_args, config.model.decoder.init_args
    # Larger inputs: the ViT's patch grows; the convolutional designs gain narrow (16-channel) stride-2 stages at
    # the new high resolutions, first in the encoder and last in the decoder.
    widen = {"patch_size": encoder.get("patch_size", 16) * 2**extra,
             "stem_channels": [16] * extra + list(encoder.get("stem_channels", [])),
             "channels": [16] * extra + list(encoder.get("channels", [])),
             "head_channels": list(decoder.get("head_channels", [])) + [16] * extra}
    for init in (encoder, decoder):
        for key, value in widen.items():
            if key in init:
                init[key] = value
    config.model.image_size = tuple(image_size)
    return autoencoder_from(config).eval()


def _roundtrip(model: Autoencoder, frames: torch.Tensor) -> torch.Tensor:
    return model.decode(model.encode(frames))


def measure(design: str, image_size: tuple[int, int], device: str, batches: tuple[int, ...],
            min_time: float) -> dict:
    torch.manual_seed(0)
    model = build(design, image_size).to(device)
    H, W = image_size

    def frames(b):
        return torch.randint(0, 256, (b, 3, H, W), dtype=torch.uint8, device=device)

    with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=device.startswith("cuda")):
        x1 = frames(1)
        with FlopCounterMode(display=False) as fc:
            tokens = model.encode(x1)
        enc_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model.decode(tokens)
        dec_flops = fc.get_total_flops()

        # Peak memory at batch 16 first, while the high-water mark still reflects only the loaded model.
        x16 = frames(16)
        _roundtrip(model, frames(1))
        sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _roundtrip(model, x16)
            sync(device)
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            base = rss_mb()
            _roundtrip(model, x16)
            peak_mb = peak_rss_mb() - base

        latency = seconds_per_call(lambda: _roundtrip(model, x1), min_time)
        best_fps, best_batch = 0.0, 1
        for b in batches:
            x = frames(b)
            fps = b / seconds_per_call(lambda: _roundtrip(model, x), min_time)
            if fps > best_fps:
                best_fps, best_batch = fps, b
    return {
        "design": design, "resolution": f"{H}x{W}", "tokens": model.num_tokens, "bytes_per_frame": model.bytes_per_frame,
        "params_encoder_m": num_params(model.encoder) / 1e6,
        "params_decoder_m": num_params(model.decoder) / 1e6,
        "gflops_encode": enc_flops / 1e9, "gflops_decode": dec_flops / 1e9,
        "latency_ms": latency * 1e3, "throughput_fps": best_fps, "best_batch": best_batch, "peak_memory_mb": peak_mb,
    }


def run_all(designs, resolutions, device: str, batches, min_time: float, threads: int, log=print) -> list[dict]:
    """Every design at every size, each in its own process."""
    cases = [dict(design=design, image_size=tuple(res), device=device, batches=tuple(batches), min_time=min_time)
             for res in resolutions for design in designs]
    return run_isolated(measure, cases, threads, log=lambda row: log(
        f"{row['design']:9s} {row['resolution']:9s} {row['throughput_fps']:8.1f} frames/s (batch {row['best_batch']}), "
        f"{row['latency_ms']:7.1f} ms at batch 1, {row['gflops_encode'] + row['gflops_decode']:6.1f} GFLOPs"))


def to_markdown(rows: list[dict], device_name: str) -> str:
    out = [f"Device: {device_name}. Encode + decode through the codec API (uint8 in, uint8 out), 128 tokens x 14 bits.",
           "", "| design | input | params enc / dec (M) | GFLOPs/frame enc + dec | latency b=1 (ms) | "
           "throughput (frames/s) | best batch | peak memory b=16 (MB) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['design']} | {r['resolution']} | {r['params_encoder_m']:.2f} / {r['params_decoder_m']:.2f} | "
                   f"{r['gflops_encode']:.2f} + {r['gflops_decode']:.2f} | {r['latency_ms']:.1f} | "
                   f"{r['throughput_fps']:.1f} | {r['best_batch']} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--resolutions", nargs="+", default=[f"{h}x{w}" for h, w in RESOLUTIONS])
    ap.add_argument("--batches", nargs="+", type=int, default=None,
                    help="batch sizes tried for throughput (default: 1 4 16 on CPU, 1 16 64 256 on CUDA)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per timing (default 2 CPU, 1 CUDA)")
    ap.add_argument("--output", default=None, help="directory for bench.json, bench.md and bench.png")
    args = ap.parse_args(argv)
    args.device = resolve_device(args.device)
    cuda = args.device.startswith("cuda")
    batches = args.batches or ([1, 16, 64, 256] if cuda else [1, 4, 16])
    min_time = args.min_time or (1.0 if cuda else 2.0)
    threads = torch.get_num_threads()
    resolutions = [tuple(int(v) for v in r.split("x")) for r in args.resolutions]
    rows = run_all(args.designs, resolutions, args.device, batches, min_time, threads)
    name = device_name(args.device, threads)
    md = to_markdown(rows, name)
    print(md)
    if args.output:
        from compressor.tools import figures

        write_report(args.output, "bench", {"device": name, "batches": batches, "rows": rows}, md)
        figures.speed_plot(rows, os.path.join(args.output, "bench.png"), name)
        print(f"wrote {args.output}/bench.json, bench.md, bench.png")


if __name__ == "__main__":
    main()
