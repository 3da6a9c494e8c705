"""Training-step time of the world model by head and attention kernel, measured in one run (``python -m
compressor.worldmodel.bench``): writes ``bench-step.json`` and ``bench-step.md``.

Each configuration takes one optimizer step (forward, backward, AdamW) on a random batch of the reference shape
under bf16 autocast (what ``--precision bf16-mixed`` runs); the configurations take turns, round after round, so a
CPU shared with other work slows them alike, and each one's median is reported. "trunk only" is the same step with
the head replaced by a mean of the states: the rest of a step is the head and its loss.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from compressor.codec.layers import set_attention_kernel
from compressor.worldmodel.model import WorldModel, WorldModelConfig

HEADS = ("full", "digits", "ar-digits")


def _step(model: WorldModel, opt: torch.optim.Optimizer, window: torch.Tensor, trunk_only: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if trunk_only:
            B, T, N = window.shape
            loss = model(window.reshape(B, T * N)[:, :-1]).float().square().mean()
        else:
            loss = -model.window_log_probs(window).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--context-frames", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--output", default="reports/world-model")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    window = torch.randint(0, 15360, (args.batch_size, args.context_frames, 128))
    runs = [("full", "sdpa", False), ("full", "matmul", False), ("digits", "matmul", False),
            ("ar-digits", "sdpa", False), ("ar-digits", "matmul", False), ("full", "matmul", True)]
    models = {}
    for key in runs:
        head, kernel, _ = key
        model = WorldModel(WorldModelConfig(15360, 128, [8, 8, 8, 6, 5], args.context_frames, args.dim, args.depth,
                                            args.heads, 0.1, head)).train()
        set_attention_kernel(model, kernel)
        models[key] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times = {key: [] for key in runs}
    for r in range(args.rounds + 1):
        for key, (model, opt) in models.items():
            dt = _step(model, opt, window, key[2])
            if r:
                times[key].append(dt)
            print(f"round {r} {key}: {dt:.2f} s", flush=True)
    rows = []
    base = statistics.median(times[("full", "sdpa", False)])
    for (head, kernel, trunk), ts in times.items():
        med = statistics.median(ts)
        params = sum(p.numel() for p in models[(head, kernel, trunk)][0].parameters())
        rows.append({"head": "(trunk only)" if trunk else head, "attention": kernel, "parameters": params,
                     "median_s": med, "min_s": min(ts), "steps_timed": len(ts), "speedup_vs_full_sdpa": base / med})
    result = {"command": "nice -n 5 python -m compressor.worldmodel.bench " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
              "shape": {"batch": args.batch_size, "frames": args.context_frames, "tokens": 128, "dim": args.dim,
                        "depth": args.depth, "heads": args.heads, "codebook": 15360},
              "precision": "bf16 autocast", "threads": torch.get_num_threads(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "rows": rows}
    md = ["# World-model training step by head and attention kernel", "",
          f"One AdamW step, batch {args.batch_size} windows of {args.context_frames} frames x 128 tokens, width "
          f"{args.dim}, {args.depth} blocks, bf16 autocast, {torch.get_num_threads()} threads; "
          f"configurations interleaved, {args.rounds} timed rounds, median (the CPU was shared: compare rows, "
          f"not absolute seconds). Machine: {result['machine']}.", "",
          f"Command: `{result['command']}`", "",
          "| head | attention | parameters | median s/step | min s/step | speed-up vs full + sdpa |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['head']} | {r['attention']} | {r['parameters'] / 1e6:.2f}M | {r['median_s']:.2f} | "
                  f"{r['min_s']:.2f} | {r['speedup_vs_full_sdpa']:.2f}x |")
    md = "\n".join(md) + "\n"
    print(md)
    from compressor.benchmark import write_report

    write_report(args.output, "bench-step", result, md)
    return result


if __name__ == "__main__":
    main()
