"""One-command training benchmark: the step ``train.py fit`` runs, timed per design, CPU path and batch size.

    python -m compressor.tools.bench_train --config base.yaml --path all --input SHARD_DIR --profile \
        --output reports/bench-train-paths         # the recipe on every CPU path, on real frames, with a profile
    python -m compressor.tools.bench_train --device cpu --output reports/bench-train-cpu   # the four default designs
    python -m compressor.tools.bench_train --output reports/bench-gpu   # --device auto: a GPU when there is one

Every row trains the model its config resolves to (``configs/base.yaml`` plus the overlay) through the
LightningModule's own ``training_step`` inside a Trainer (loss, AdamW, clipping and EMA included), on ``--input``
(procedural frames without), for ``--warmup`` untimed then ``--steps`` timed steps (``tools.step_timer``): the same
step and the same timing as ``ThroughputMonitor`` in a real run. Per row: parameters; training FLOPs per image
(``torch.utils.flop_counter``); step images/s (data loading excluded, as ``ThroughputMonitor``) and loop images/s
(included); GFLOP/s and MFU against the matmul ceiling measured in the row's precision in the same run; encode
frames/s at the best batch size; peak memory. With ``--profile``, the top operators of two steps per row. A path is
a trainer precision and an attention kernel (``training.perf.CPU_PATHS``; ``auto``: the one ``auto_precision``
picks here). Each row runs in a fresh process, so peak memory and compiled graphs are its own.
"""
from __future__ import annotations

import argparse
import os

import torch

from compressor.benchmark import (cpu_flags, device_name, peak_rss_mb, rss_mb, run_isolated, seconds_per_call,
                                  write_report)
from compressor.training.cli import CONFIGS, autoencoder_from, resolve
from compressor.codec.layers import set_attention_kernel
from compressor.tools.step_timer import fit_step_rate, loader_images_per_s
from compressor.training.perf import CPU_PATHS, fastest_cpu_path, matmul_peak_flops, train_flops_per_image
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


def measure(label: str, config: str, device: str, batch: int, encode_batches, peak: float, path: tuple[str, str],
            grad_checkpointing: bool, compile_model: bool, with_encode: bool, shards: str | None, steps: int,
            warmup: int, profile: bool, min_time: float = 3.0) -> dict:
    precision, attention = path
    base = rss_mb()
    timing = fit_step_rate([os.path.join(CONFIGS, config)], batch, device, precision, attention, steps, warmup,
                           shards, compile_model, grad_checkpointing, profile_steps=2 if profile else 0)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mb() - base
    model = model_from_config(config).to(device)
    flops = train_flops_per_image(model)
    rate = timing["step_images_per_s"]
    row = {"config": label, "file": config, "precision": precision, "attention": attention,
           "grad_checkpointing": grad_checkpointing, "batch": batch, "params_m": num_params(model) / 1e6,
           "train_gflops_per_image": flops / 1e9, "train_images_per_s": rate,
           "loop_images_per_s": timing["loop_images_per_s"], "gflops_per_s": rate * flops / 1e9,
           "mfu": rate * flops / peak, "peak_memory_mb": peak_mb, "profile": timing["profile"]}
    if with_encode:
        set_attention_kernel(model, attention)
        row["encode_fps"], row["encode_batch"] = _encode_rate(model.eval(), encode_batches, device,
                                                              precision.startswith("bf16"), min_time)
    return row


def run_all(device: str, batch: int, encode_batches, threads: int, compile_model: bool, checkpointing_configs,
            configs: dict[str, str] = DEFAULT_CONFIGS, paths: list[tuple[str, str]] = (("32-true", "sdpa"),),
            shards: str | None = None, steps: int = 20, warmup: int = 5, profile: bool = False,
            min_time: float = 3.0, log=print) -> dict:
    """Benchmark ``configs`` (label -> file in configs/) on each of ``paths`` ((precision, attention) pairs)."""
    torch.set_num_threads(threads)
    ceilings = {}
    for precision in sorted({p for p, _ in paths}):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
        ceilings[precision] = matmul_peak_flops(device, dtype, size=8192 if device.startswith("cuda") else 2048)
        log(f"matmul ceiling: {ceilings[precision] / 1e12:.2f} TFLOP/s ({dtype})")
    # The data loader alone, on the first config's data settings: it should never be what the step waits for.
    first = os.path.join(CONFIGS, next(iter(configs.values())))
    loader = loader_images_per_s([first], batch, shards) if not device.startswith("cuda") else None
    if loader:
        log(f"data loader alone: {loader:.0f} images/s")
    jobs = [(label, cfg, False, True) for label, cfg in configs.items()]
    jobs += [(label, configs[label], True, False) for label in checkpointing_configs]
    cases = [dict(label=label, config=cfg, device=device, batch=batch, encode_batches=encode_batches,
                  peak=ceilings[path[0]], path=path, grad_checkpointing=gc, compile_model=compile_model,
                  with_encode=with_encode, shards=shards, steps=steps, warmup=warmup, profile=profile,
                  min_time=min_time)
             for path in paths for label, cfg, gc, with_encode in jobs]
    rows = run_isolated(measure, cases, threads, log=lambda row: log(
        f"{row['config']:24s} {row['precision']:10s} {row['attention']:6s} gc={row['grad_checkpointing']!s:5s} "
        f"{row['train_images_per_s']:8.2f} img/s (loop {row['loop_images_per_s'] or 0:.2f})  "
        f"MFU {100 * row['mfu']:5.1f}%  peak {row['peak_memory_mb']:8.0f} MB"
        + (f"  encode {row['encode_fps']:.1f} fps @ {row['encode_batch']}" if "encode_fps" in row else "")))
    return {"device": device_name(device, threads, "/".join(sorted(ceilings))), "cpu": cpu_flags(),
            "ceilings_tflops": {p: c / 1e12 for p, c in ceilings.items()}, "batch": batch, "compile": compile_model,
            "shards": shards, "steps": steps, "warmup": warmup, "loader_images_per_s": loader, "rows": rows}


def to_markdown(result: dict) -> str:
    ceilings = ", ".join(f"{p} {c:.2f}" for p, c in result["ceilings_tflops"].items())
    cpu = result.get("cpu") or {}
    lines = [f"{result['device']}; CPU flags {', '.join(cpu.get('flags', [])) or 'n/a'}; training batch "
             f"{result['batch']}; matmul ceilings (TFLOP/s) {ceilings}; torch.compile "
             f"{'on' if result['compile'] else 'off'}; data {result.get('shards') or 'procedural frames'}; "
             f"{result.get('steps')} timed steps after {result.get('warmup')}"
             + (f"; data loader alone {result['loader_images_per_s']:.0f} images/s" if result.get("loader_images_per_s")
                else "") + ".", "",
             "| config | precision | attention | grad checkpointing | params (M) | train GFLOPs/image | "
             "step images/s | loop images/s | GFLOP/s | MFU | peak memory (MB) | encode frames/s (batch) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        enc = f"{r['encode_fps']:.1f} ({r['encode_batch']})" if "encode_fps" in r else ""
        loop = f"{r['loop_images_per_s']:.2f}" if r.get("loop_images_per_s") else ""
        lines.append(f"| {r['config']} | {r['precision']} | {r['attention']} | "
                     f"{'on' if r['grad_checkpointing'] else 'off'} | {r['params_m']:.1f} | "
                     f"{r['train_gflops_per_image']:.1f} | {r['train_images_per_s']:.2f} | {loop} | "
                     f"{r['gflops_per_s']:.0f} | {100 * r['mfu']:.1f}% | {r['peak_memory_mb']:.0f} | {enc} |")
    for r in result["rows"]:
        if r.get("profile"):
            lines += ["", f"### Profile: {r['config']}, {r['precision']}, {r['attention']} (two steps)", "", "```",
                      r["profile"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


PATHS = {"bf16-matmul": ("bf16-mixed", "matmul"), "bf16-sdpa": ("bf16-mixed", "sdpa"), "fp32": ("32-true", "sdpa")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.bench_train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: 64 on CUDA, 16 on the CPU)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (kernel choice, compiles)")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per encode timing")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward (eager if it fails)")
    ap.add_argument("--config", nargs="+", default=None, metavar="NAME.yaml",
                    help="configs/ overlays to measure instead of the four default designs")
    ap.add_argument("--path", nargs="+", default=["auto"], choices=["auto", "all", *PATHS],
                    help="precision and attention kernel per row (auto: bf16 with SDPA on CUDA; on the CPU the path "
                         "train.py's auto_precision picks here; all: every CPU path)")
    ap.add_argument("--input", default=None, help="frame shards to train on (default: procedural frames)")
    ap.add_argument("--profile", action="store_true", help="also print and save the top operators of two steps")
    ap.add_argument("--output", default=None, help="directory for bench.json and bench.md")
    args = ap.parse_args(argv)
    args.device = resolve_device(args.device)
    cuda = args.device.startswith("cuda")
    configs = {os.path.splitext(c)[0]: c for c in args.config} if args.config else DEFAULT_CONFIGS
    checkpointing = [] if args.config else (["vit (comma scale)", "convstem (comma scale)"] if cuda
                                            else ["vit (comma scale)"])
    batch = args.batch_size or (64 if cuda else 16)
    paths = []
    for name in args.path:
        if name == "all":
            paths += list(CPU_PATHS)
        elif name == "auto":
            paths.append(("bf16-mixed", "sdpa") if cuda else
                         fastest_cpu_path(model_from_config(next(iter(configs.values()))), batch)[0])
        else:
            paths.append(PATHS[name])
    paths = list(dict.fromkeys(paths))
    result = run_all(args.device, batch, (128, 256, 512, 1024) if cuda else (1, 4, 16), args.threads, args.compile,
                     checkpointing, configs, paths, args.input, args.steps, args.warmup, args.profile,
                     args.min_time)
    md = to_markdown(result)
    print(md)
    if args.output:
        write_report(args.output, "bench", result, md)


if __name__ == "__main__":
    main()
