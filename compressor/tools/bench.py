"""ViT versus convolution: speed of the three designs at three input sizes, at the same 128-token budget.

    python -m compressor.tools.bench --output reports/bench              # CPU (all cores torch sees)
    python -m compressor.tools.bench --device cuda --output reports/bench-gpu   # one command on a CUDA machine

Designs (codec API: uint8 frames -> tokens -> uint8 frames):

- ``vit``: pure ViT, patchify + transformer in the encoder, transformer + linear unpatchify in the decoder;
- ``convstem``: strided-conv stem + transformer, transformer + pixel-shuffle conv head;
- ``conv``: convolutions only (stride-2 stages + residual blocks), no attention.

At 128x256 each is its ``configs/cpu-*-224B.yaml`` model. Larger inputs keep 128 tokens of 14 bits (224 bytes):
the ViT's patch grows (32, 64 px), and the convolutional designs gain stride-2 stages (narrow ones, at the new
high resolutions). Measured per design and size: parameters, FLOPs per frame (``torch.utils.flop_counter``:
matmuls, convolutions, attention), encode + decode latency at batch 1, the best throughput over batch sizes, and
peak memory at batch 16 above the loaded model (CUDA: allocator peak; CPU: process RSS high-water in a fresh
process). Each case runs in its own process so memory peaks do not mix. Writes ``bench.json``, ``bench.md``
and ``bench.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import yaml

from compressor.utils import num_params
from compressor.codec.autoencoder import Autoencoder, build_part

RESOLUTIONS = ((128, 256), (256, 512), (512, 1024))
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")
DESIGNS = {"vit": "cpu-vit-224B.yaml", "convstem": "cpu-convstem-224B.yaml", "conv": "cpu-conv-224B.yaml"}


def model_config(name: str) -> dict:
    """The ``model`` section that ``train.py --config configs/NAME`` trains: ``configs/base.yaml`` with the overlay.

    Read as YAML, without Lightning (the GPU benchmark runs on a stock PyTorch image): a part (encoder, quantizer,
    decoder) that the overlay gives a new ``class_path`` is replaced whole, otherwise its ``init_args`` are updated,
    as LightningCLI does.
    """
    model: dict = {}
    for path in ("base.yaml", name):
        with open(os.path.join(CONFIGS, path)) as f:
            overlay = yaml.safe_load(f).get("model", {})
        for key, value in overlay.items():
            old = model.get(key)
            if isinstance(value, dict) and isinstance(old, dict) and value.get("class_path", old["class_path"]) == old["class_path"]:
                value = {"class_path": old["class_path"], "init_args": {**old.get("init_args", {}), **value.get("init_args", {})}}
            model[key] = value
    return model


def model_from_config(name: str, image_size: tuple[int, int] = (128, 256), **widen) -> Autoencoder:
    """The autoencoder of ``configs/NAME``; ``widen`` updates the encoder's and decoder's init_args by name."""
    spec = model_config(name)
    parts = {}
    for part in ("encoder", "quantizer", "decoder"):
        init = dict(spec[part].get("init_args", {}))
        if part != "quantizer":
            init.update({k: v for k, v in widen.items() if k in init})
        parts[part] = build_part({"class_path": spec[part]["class_path"], "init_args": init})
    return Autoencoder(**parts, image_size=image_size)


def build(design: str, image_size: tuple[int, int]) -> Autoencoder:
    """The design's CPU config at 128x256, with the grid stride scaled so every size gives 128 tokens."""
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {DESIGNS}")
    extra = {128: 0, 256: 1, 512: 2}[image_size[0]]  # extra x2 downsampling stages beyond 16 px
    init = {part: model_config(DESIGNS[design])[part]["init_args"] for part in ("encoder", "decoder")}
    # Larger inputs: the ViT's patch grows; the convolutional designs gain narrow (16-channel) stride-2 stages at
    # the new high resolutions, first in the encoder and last in the decoder.
    widen = {"patch_size": init["encoder"].get("patch_size", 16) * 2**extra,
             "stem_channels": [16] * extra + init["encoder"].get("stem_channels", []),
             "channels": [16] * extra + init["encoder"].get("channels", []),
             "head_channels": init["decoder"].get("head_channels", []) + [16] * extra}
    return model_from_config(DESIGNS[design], image_size, **widen).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _roundtrip(model: Autoencoder, frames: torch.Tensor) -> torch.Tensor:
    return model.decode(model.encode(frames))


def _timed(model, frames, device, min_time: float) -> float:
    """Seconds per call of encode + decode, averaged over at least ``min_time`` seconds (and 3 calls)."""
    _roundtrip(model, frames)  # warm-up
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < min_time:
        _roundtrip(model, frames)
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base

        latency = _timed(model, x1, device, min_time)
        best_fps, best_batch = 0.0, 1
        for b in batches:
            fps = b / _timed(model, frames(b), device, min_time)
            if fps > best_fps:
                best_fps, best_batch = fps, b
    return {
        "design": design, "resolution": f"{H}x{W}", "tokens": model.num_tokens, "bytes_per_frame": model.bytes_per_frame,
        "params_encoder_m": num_params(model.encoder) / 1e6,
        "params_decoder_m": num_params(model.decoder) / 1e6,
        "gflops_encode": enc_flops / 1e9, "gflops_decode": dec_flops / 1e9,
        "latency_ms": latency * 1e3, "throughput_fps": best_fps, "best_batch": best_batch, "peak_memory_mb": peak_mb,
    }


def _worker(args, queue) -> None:
    torch.set_num_threads(args[-1])
    queue.put(measure(*args[:-1]))


def run_all(designs, resolutions, device: str, batches, min_time: float, threads: int, log=print) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for res in resolutions:
        for design in designs:
            q = ctx.Queue()
            p = ctx.Process(target=_worker, args=((design, tuple(res), device, tuple(batches), min_time, threads), q))
            p.start()
            row = q.get()
            p.join()
            rows.append(row)
            log(f"{design:9s} {row['resolution']:9s} {row['throughput_fps']:8.1f} frames/s (batch {row['best_batch']}), "
                f"{row['latency_ms']:7.1f} ms at batch 1, {row['gflops_encode'] + row['gflops_decode']:6.1f} GFLOPs")
    return rows


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


def device_name(device: str, threads: int, precision: str | None = None) -> str:
    """The device in words, with the precision measured in (default: bf16 on CUDA, float32 on the CPU)."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} ({precision or 'bf16'})"
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {threads} threads ({precision or 'float32'})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--resolutions", nargs="+", default=[f"{h}x{w}" for h, w in RESOLUTIONS])
    ap.add_argument("--batches", nargs="+", type=int, default=None,
                    help="batch sizes tried for throughput (default: 1 4 16 on CPU, 1 16 64 256 on CUDA)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per timing (default 2 CPU, 1 CUDA)")
    ap.add_argument("--output", default=None, help="directory for bench.json, bench.md and bench.png")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
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

        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "bench.json"), "w") as f:
            json.dump({"device": name, "batches": batches, "rows": rows}, f, indent=1)
        with open(os.path.join(args.output, "bench.md"), "w") as f:
            f.write(md)
        figures.speed_plot(rows, os.path.join(args.output, "bench.png"), name)
        print(f"wrote {args.output}/bench.json, bench.md, bench.png")


if __name__ == "__main__":
    main()
