"""Speed against resolution (issue 35, LeCun's claim): each encoder with its token grid following the input.

    python -m compressor.tools.bench_resolution --device cpu --output reports/bench-resolution-cpu
    python -m compressor.tools.bench_resolution --device cuda --output reports/bench-resolution-gpu   # bf16 autocast
    python -m compressor.tools.bench_resolution --config experiments/encoders/vit.yaml --sizes 128x256 --min-time 0.2
    python -m compressor.tools.bench_resolution --device cpu --no-timing --output reports/bench-resolution-cpu

Per encoder overlay (``configs/experiments/encoders``, resolved on ``configs/base.yaml`` as ``train.py`` resolves it)
and input size: the whole autoencoder at that size with 16-pixel tokens, so 128, 512, 2048 and 8192 tokens at
128x256, 256x512, 512x1024 and 1024x2048 (the byte budget raised to match), and measured

- encode frames/s: the codec API's ``encode`` (uint8 frames -> tokens), at ``--encode-batch`` frames;
- encoder training images/s: forward and backward of the encoder alone (encoder, pre-quantization, quantizer), the
  part that differs between the designs;
- training images/s: full AdamW steps of the autoencoder (the recipe's decoder included) on random frames, as
  ``compressor.training.perf.train_images_per_s`` times them;
- FLOPs per frame of the encode and of a training step (counted on the device, grouped convolutions counted right,
  attention included: ``flop_counter(attention=True)``, which the training budgets leave off), and peak memory
  (CUDA: allocator peak; CPU: RSS high-water of the case's own process).

Batches shrink with the pixel count (``--train-batch`` and ``--encode-batch`` are for 128x256; at least 1). Each
case runs in its own process. A case whose single step takes longer than ``--max-step-s``, or that runs out of
memory, is recorded as skipped with the reason, and the larger sizes of that encoder are skipped after it.
Writes ``bench-resolution.json`` and ``bench-resolution.md``.

``--no-timing`` counts FLOPs only (one counted encode and one counted training step a case, no timed loops, no
``--max-step-s``). Into an ``--output`` that already holds ``bench-resolution.json`` it writes only the FLOPs of the
rows it recounts (same config and resolution), keeping their timings and the device they were timed on.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from compressor.benchmark import device_name, peak_rss_mb, rss_mb, run_isolated, seconds_per_call, sync, write_report
from compressor.training.cli import CONFIGS, autoencoder_from, resolve
from compressor.training.losses import ReconstructionLoss
from compressor.training.perf import flop_counter, train_images_per_s
from compressor.utils import num_params, resolve_device

SIZES = ((128, 256), (256, 512), (512, 1024), (1024, 2048))
ENCODERS = ("experiments/encoders/vit.yaml", "experiments/encoders/convstem-group.yaml",
            "experiments/encoders/convnext.yaml", "experiments/encoders/convvit.yaml")
BASE_PIXELS = 128 * 256


def build(config: str, size: tuple[int, int]):
    """The autoencoder of ``configs/CONFIG`` on base.yaml at ``size``: 16-pixel tokens, budget raised to fit them."""
    path = config if os.path.exists(config) else os.path.join(CONFIGS, config)
    tokens = size[0] * size[1] // 256
    cfg = resolve(["--config", path, "--data.image_size", f"[{size[0]}, {size[1]}]",
                   "--model.max_bytes_per_frame", str(-(-tokens * 14 // 8))])
    return autoencoder_from(cfg)


def _encoder_step(model, x):
    """Forward and backward of the encode half; the loss only needs to reach every encoder weight."""
    model.encode_to_codes(x)["codes"].float().pow(2).mean().backward()


FLOPS_FIELDS = ("train_gflops_per_image", "encode_gflops_per_frame", "flops_include_attention")


def measure(config: str, size: tuple[int, int], device: str, bf16: bool, train_batch: int, encode_batch: int,
            min_time: float, max_step_s: float, timing: bool = True) -> dict:
    """One case's row; ``timing=False``: its FLOPs only."""
    torch.manual_seed(0)
    H, W = size
    row = {"config": os.path.splitext(os.path.basename(config))[0], "file": config, "resolution": f"{H}x{W}"}
    try:
        model = build(config, size).to(device)
    except ValueError as e:
        return {**row, "skipped": f"does not build: {e}"}
    scale = H * W // BASE_PIXELS
    tb, eb = max(1, train_batch // scale), max(1, encode_batch // scale)
    row.update(tokens=model.num_tokens, encoder=type(model.encoder).__name__,
               params_encoder_m=num_params(model.encoder) / 1e6, train_batch=tb, encode_batch=eb)
    autocast = torch.autocast(device.split(":")[0], torch.bfloat16, enabled=bf16)
    x = torch.rand(tb, 3, H, W, device=device) * 2 - 1
    frames = torch.randint(0, 256, (eb, 3, H, W), dtype=torch.uint8, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = rss_mb()
    try:
        with autocast:
            # One timed training step first: it decides whether this size is worth timing at all.
            model.train()
            t0 = time.perf_counter()
            with flop_counter(attention=True) as fc:
                _train_step(model, x[:1])
            sync(device)
            row["train_gflops_per_image"] = fc.get_total_flops() / 1e9
            if timing and (step_s := time.perf_counter() - t0) > max_step_s:
                return {**row, "skipped": f"one training step at batch 1 took {step_s:.0f} s (> --max-step-s)"}
            model.eval()
            with flop_counter(attention=True) as fc:
                model.encode(frames[:1])
            row["encode_gflops_per_frame"] = fc.get_total_flops() / 1e9
            row["flops_include_attention"] = True  # rows of older reports lack it: their FLOPs left SDPA out
            if not timing:
                return row
            row["encode_fps"] = eb / seconds_per_call(lambda: model.encode(frames), min_time)
            model.train()
            row["encoder_train_images_per_s"] = tb / seconds_per_call(lambda: _encoder_step(model, x), min_time)
        # train_images_per_s sets its own autocast; it changes the weights, which nothing here reads again.
        row["train_images_per_s"] = train_images_per_s(model, tb, device, bf16, min_time)
        sync(device)
    except (torch.OutOfMemoryError, MemoryError) as e:
        return {**row, "skipped": f"out of memory ({type(e).__name__})"}
    row["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
                             else peak_rss_mb() - base)
    return row


def _train_step(model, x) -> None:
    ReconstructionLoss()(model(x)["recon"].float(), x)["loss"].backward()
    model.zero_grad(set_to_none=True)


def run_all(configs: list[str], sizes, device: str, bf16: bool, train_batch: int, encode_batch: int,
            min_time: float, max_step_s: float, threads: int, log=print, timing: bool = True) -> list[dict]:
    """Every config at every size, each in its own process; a config's larger sizes are skipped after a skip."""
    rows = []
    for config in configs:
        for i, size in enumerate(sizes):
            case = dict(config=config, size=tuple(size), device=device, bf16=bf16, train_batch=train_batch,
                        encode_batch=encode_batch, min_time=min_time, max_step_s=max_step_s, timing=timing)
            row = run_isolated(measure, [case], threads)[0]
            rows.append(row)
            log(_line(row))
            if "skipped" in row:
                for larger in sizes[i + 1:]:
                    rows.append({"config": row["config"], "file": config, "resolution": f"{larger[0]}x{larger[1]}",
                                 "skipped": f"after {row['resolution']} was skipped"})
                    log(_line(rows[-1]))
                break
    return rows


def update_flops(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with the FLOPs of ``new``'s counted rows written into the rows of the same config and resolution;
    a counted row ``old`` lacks is appended (FLOPs only)."""
    rows = [dict(r) for r in old]
    at = {(r["config"], r["resolution"]): r for r in rows}
    for r in new:
        if not all(k in r for k in FLOPS_FIELDS):
            continue  # not counted: it did not build, or ran out of memory
        if (key := (r["config"], r["resolution"])) in at:
            at[key].update({k: r[k] for k in FLOPS_FIELDS})
        else:
            rows.append(r)
    return rows


def _line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['config']:16s} {r['resolution']:10s} skipped: {r['skipped']}"
    if "encode_fps" not in r:
        return (f"{r['config']:16s} {r['resolution']:10s} {r['tokens']:5d} tokens  encode "
                f"{r['encode_gflops_per_frame']:.2f} GFLOPs/frame  train {r['train_gflops_per_image']:.1f} GFLOPs/image")
    return (f"{r['config']:16s} {r['resolution']:10s} {r['tokens']:5d} tokens  encode {r['encode_fps']:8.1f} fps  "
            f"encoder train {r['encoder_train_images_per_s']:8.1f} img/s  train {r['train_images_per_s']:7.2f} img/s")


def to_markdown(rows: list[dict], device: str, sizes) -> str:
    counted = [r.get("flops_include_attention", False) for r in rows if "train_gflops_per_image" in r]
    flops = ("FLOPs include attention (flop_counter(attention=True))." if all(counted) else
             "FLOPs include attention only in rows recounted since (flops_include_attention in the json).")
    out = [f"Device: {device}. 16-pixel tokens: the grid follows the input (128 tokens at 128x256). Batches are for "
           f"128x256 and shrink with the pixel count. {flops}", "",
           "| encoder | input | tokens | encode GFLOPs/frame | encode frames/s (batch) | encoder train images/s | "
           "train GFLOPs/image | train images/s (batch) | peak memory (MB) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['config']} | {r['resolution']} | {r.get('tokens', '')} | | skipped: {r['skipped']} "
                       "| | | | |")
            continue
        if "encode_fps" not in r:  # counted, not timed (--no-timing)
            out.append(f"| {r['config']} | {r['resolution']} | {r['tokens']} | {r['encode_gflops_per_frame']:.2f} | "
                       f"| | {r['train_gflops_per_image']:.1f} | | |")
            continue
        out.append(f"| {r['config']} | {r['resolution']} | {r['tokens']} | {r['encode_gflops_per_frame']:.2f} | "
                   f"{r['encode_fps']:.1f} ({r['encode_batch']}) | {r['encoder_train_images_per_s']:.1f} | "
                   f"{r['train_gflops_per_image']:.1f} | {r['train_images_per_s']:.2f} ({r['train_batch']}) | "
                   f"{r['peak_memory_mb']:.0f} |")
    names = list(dict.fromkeys(r["config"] for r in rows))
    for key, what in (("encode_fps", "Encode frames/s"), ("train_images_per_s", "Training images/s")):
        # Where the curves cross: a ratio above 1 is an encoder faster than the first (the pure ViT by default).
        out += ["", f"{what} against {names[0]}'s at the same size (> 1: faster):", "",
                "| encoder | " + " | ".join(f"{h}x{w}" for h, w in sizes) + " |", "|---|" + "---:|" * len(sizes)]
        done = {(r["config"], r["resolution"]): r[key] for r in rows if key in r and "skipped" not in r}
        for name in names:
            cells = []
            for h, w in sizes:
                ref, own = done.get((names[0], f"{h}x{w}")), done.get((name, f"{h}x{w}"))
                cells.append(f"{own / ref:.2f}" if ref and own else "")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.bench_resolution", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--config", nargs="+", default=list(ENCODERS),
                    help="overlays (paths, or relative to configs/); the first is the reference of the ratio table")
    ap.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES], metavar="HxW")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="autocast (auto: bf16 on CUDA, float32 on the CPU)")
    ap.add_argument("--train-batch", type=int, default=None, help="at 128x256 (default: 64 on CUDA, 16 on the CPU)")
    ap.add_argument("--encode-batch", type=int, default=None, help="at 128x256 (default: 256 on CUDA, 16 on the CPU)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per timing (default: 1 CUDA, 2 CPU)")
    ap.add_argument("--max-step-s", type=float, default=None,
                    help="skip a size whose one training step at batch 1 takes longer (default: 10 CUDA, 30 CPU)")
    ap.add_argument("--no-timing", action="store_true",
                    help="count FLOPs only; into an --output with a bench-resolution.json, update only their FLOPs")
    ap.add_argument("--output", default=None, help="directory for bench-resolution.json and .md")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    bf16 = cuda if args.precision == "auto" else args.precision == "bf16"
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    threads = torch.get_num_threads()
    rows = run_all(args.config, sizes, device, bf16, args.train_batch or (64 if cuda else 16),
                   args.encode_batch or (256 if cuda else 16), args.min_time or (1.0 if cuda else 2.0),
                   args.max_step_s or (10.0 if cuda else 30.0), threads, timing=not args.no_timing)
    result = {"device": device_name(device, threads, "bf16" if bf16 else "float32"), "sizes": args.sizes}
    old = os.path.join(args.output or "", "bench-resolution.json")
    if args.no_timing and args.output and os.path.exists(old):
        with open(old) as f:
            result = json.load(f)  # the timings' device and sizes stay
        result["sizes"] += [s for s in args.sizes if s not in result["sizes"]]
        rows = update_flops(result["rows"], rows)
    result["rows"] = rows
    md = to_markdown(rows, result["device"], [tuple(int(v) for v in s.split("x")) for s in result["sizes"]])
    print(md)
    if args.output:
        paths = write_report(args.output, "bench-resolution", result, md)
        print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
