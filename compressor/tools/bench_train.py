"""One-command training benchmark: pure ViT against conv stem, at the default and at comma.ai scale.

    python -m compressor.tools.bench_train --device cpu --output reports/bench-train-cpu   # CPU mode (small batches)
    python -m compressor.tools.bench_train --output reports/bench-gpu   # --device auto: a GPU when there is one, ~3 min
    python -m compressor.tools.bench_train --config cpu-best-224B.yaml cpu-convstem-224B.yaml --batch-size 16 \
        --precision bf16 --output reports/bench-train-cpu-recipe                    # any configs, as they train

Per config: parameters; training FLOPs per image (forward + loss + backward, ``torch.utils.flop_counter``);
training images/s (AdamW steps on random frames; bf16 autocast on CUDA, float32 on the CPU unless ``--precision``
says otherwise); MFU against the matmul ceiling measured on the same device in the same precision; encode frames/s
at the best batch size; peak memory of the training step. Also the gradient-checkpointing trade-off (images/s and peak memory, on and off).
Each measurement runs in a fresh process, so peak memory is its own. Configs are resolved on ``configs/base.yaml`` by
the parser ``train.py`` uses, so it needs the ``[train]`` extra.
"""

from __future__ import annotations

import argparse
import os

import torch

from compressor.benchmark import (device_name, peak_rss_mb, rss_mb, run_isolated, seconds_per_call, sync,
                                  write_report)
from compressor.codec.layers import set_grad_checkpointing
from compressor.training.cli import CONFIGS, autoencoder_from, resolve
from compressor.training.perf import matmul_peak_flops, train_flops_per_image, train_images_per_s
from compressor.utils import num_params, resolve_device

DEFAULT_CONFIGS = {"vit (default)": "vit-224B.yaml", "convstem (default)": "convstem-224B.yaml",
           "vit (comma scale)": "comma-scale.yaml", "convstem (comma scale)": "comma-scale-convstem.yaml"}


@torch.no_grad()
def _encode_rate(model, batches, device: str, bf16: bool, min_time: float) -> tuple[float, int]:
    best = (0.0, 0)
    for b in batches:
        frames = torch.randint(0, 256, (b, 3, *model.image_size), dtype=torch.uint8, device=device)
        with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=bf16):
            best = max(best, (b / seconds_per_call(lambda: model.encode(frames), min_time), b))
    return best


def model_from_config(name: str):
    """The autoencoder that ``train.py fit --config configs/NAME`` trains."""
    return autoencoder_from(resolve(["--config", os.path.join(CONFIGS, name)]))


def measure(label: str, config: str, device: str, batch: int, encode_batches, min_time: float, peak: float,
            grad_checkpointing: bool, compile_model: bool, with_encode: bool, bf16: bool | None = None) -> dict:
    torch.manual_seed(0)
    bf16 = device.startswith("cuda") if bf16 is None else bf16
    model = model_from_config(config).to(device).train()
    if grad_checkpointing:
        set_grad_checkpointing(model)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = rss_mb()
    rate = train_images_per_s(model, batch, device, bf16, min_time, compile_model)
    sync(device)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mb() - base
    flops = train_flops_per_image(model)  # after the memory reading: counting builds a copy of the model
    row = {"config": label, "file": config, "grad_checkpointing": grad_checkpointing, "batch": batch,
           "params_m": num_params(model) / 1e6, "train_gflops_per_image": flops / 1e9,
           "train_images_per_s": rate, "mfu": rate * flops / peak, "peak_memory_mb": peak_mb}
    if with_encode:
        row["encode_fps"], row["encode_batch"] = _encode_rate(model.eval(), encode_batches, device, bf16, min_time)
    return row


def run_all(device: str, batch: int, encode_batches, min_time: float, threads: int, compile_model: bool,
            checkpointing_configs, configs: dict[str, str] = DEFAULT_CONFIGS, bf16: bool | None = None, log=print) -> dict:
    """Benchmark ``configs`` (label -> file in configs/); ``bf16`` autocast defaults to on for CUDA only."""
    torch.set_num_threads(threads)
    bf16 = device.startswith("cuda") if bf16 is None else bf16
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak_flops(device, dtype, size=8192 if device.startswith("cuda") else 2048)
    log(f"matmul ceiling: {peak / 1e12:.2f} TFLOP/s ({dtype})")
    jobs = [(label, cfg, False, True) for label, cfg in configs.items()]
    jobs += [(label, configs[label], True, False) for label in checkpointing_configs]
    cases = [dict(label=label, config=cfg, device=device, batch=batch, encode_batches=encode_batches,
                  min_time=min_time, peak=peak, grad_checkpointing=gc, compile_model=compile_model,
                  with_encode=with_encode, bf16=bf16) for label, cfg, gc, with_encode in jobs]
    rows = run_isolated(measure, cases, threads, log=lambda row: log(
        f"{row['config']:24s} gc={row['grad_checkpointing']!s:5s} {row['train_images_per_s']:8.2f} img/s  "
        f"MFU {100 * row['mfu']:5.1f}%  peak {row['peak_memory_mb']:8.0f} MB"
        + (f"  encode {row['encode_fps']:.1f} fps @ {row['encode_batch']}" if "encode_fps" in row else "")))
    return {"device": device_name(device, threads, "bf16" if bf16 else "float32"), "matmul_tflops": peak / 1e12, "precision": str(dtype),
            "batch": batch, "compile": compile_model, "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [f"{result['device']}; training batch {result['batch']}; {result['precision']}; matmul ceiling "
             f"{result['matmul_tflops']:.2f} TFLOP/s; torch.compile {'on' if result['compile'] else 'off'}.", "",
             "| config | grad checkpointing | params (M) | train GFLOPs/image | train images/s | MFU | peak memory (MB) "
             "| encode frames/s (batch) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        enc = f"{r['encode_fps']:.1f} ({r['encode_batch']})" if "encode_fps" in r else ""
        lines.append(f"| {r['config']} | {'on' if r['grad_checkpointing'] else 'off'} | {r['params_m']:.1f} | "
                     f"{r['train_gflops_per_image']:.1f} | {r['train_images_per_s']:.2f} | {100 * r['mfu']:.1f}% | "
                     f"{r['peak_memory_mb']:.0f} | {enc} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.bench_train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: 64 on CUDA, 4 on the CPU)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per timing (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step (eager if it fails)")
    ap.add_argument("--config", nargs="+", default=None, metavar="NAME.yaml",
                    help="configs/ overlays to measure instead of the four default designs")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "both"],
                    help="autocast for the timed steps (auto: bf16 on CUDA, float32 on the CPU; both: one table each, "
                         "what train.py's auto_precision chooses between on a CPU)")
    ap.add_argument("--output", default=None, help="directory for bench.json and bench.md")
    args = ap.parse_args(argv)
    args.device = resolve_device(args.device)
    cuda = args.device.startswith("cuda")
    configs = {os.path.splitext(c)[0]: c for c in args.config} if args.config else DEFAULT_CONFIGS
    checkpointing = [] if args.config else (["vit (comma scale)", "convstem (comma scale)"] if cuda
                                            else ["vit (comma scale)"])
    precisions = {"auto": [None], "bf16": [True], "fp32": [False], "both": [True, False]}[args.precision]
    results = [run_all(args.device, args.batch_size or (64 if cuda else 4),
                       (128, 256, 512, 1024) if cuda else (1, 4, 16), args.min_time or 3.0,
                       args.threads, args.compile, checkpointing, configs, bf16) for bf16 in precisions]
    result = results[0] if len(results) == 1 else {"precisions": results}
    md = "\n".join(to_markdown(r) for r in results)
    print(md)
    if args.output:
        write_report(args.output, "bench", result, md)


if __name__ == "__main__":
    main()
