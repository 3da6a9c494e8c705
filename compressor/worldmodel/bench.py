"""Training-step time of the world model by head and attention kernel, measured in one run (``python -m
compressor.worldmodel bench``, ``compressor-world-model bench``): writes ``bench-step.json`` and ``bench-step.md``.

Each configuration takes one optimizer step (forward, backward, AdamW) on a random batch of the reference shape
under bf16 autocast (what ``--precision bf16-mixed`` runs); the configurations take turns, round after round, so a
CPU shared with other work slows them alike, and each one's median is reported. "trunk only" is the same step with
the head replaced by a mean of the states: the rest of a step is the head and its loss.

Times are CPU seconds of this process (``time.process_time``) as well as wall seconds: on a CPU shared with other
runs the wall times mean little, while CPU time counts only the work done (one thread by default, so that no
thread spins waiting for a descheduled sibling).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import torch

from compressor.codec.layers import set_attention_kernel
from compressor.worldmodel.model import WorldModel, WorldModelConfig

HEADS = ("full", "digits", "ar-digits")


def _step(model: WorldModel, opt: torch.optim.Optimizer, window: torch.Tensor,
          trunk_only: bool) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if trunk_only:
            B, T, N = window.shape
            loss = model(window.reshape(B, T * N)[:, :-1]).float().square().mean()
        else:
            loss = -model.window_log_probs(window).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.process_time() - c0, time.perf_counter() - t0


def main(args) -> dict:
    """``compressor-world-model bench``: ``args`` holds batch_size, context_frames, dim, depth, heads, rounds,
    threads and output."""
    torch.set_num_threads(args.threads)
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
    walls = {key: [] for key in runs}
    for r in range(args.rounds + 1):
        for key, (model, opt) in models.items():
            cpu, wall = _step(model, opt, window, key[2])
            if r:
                times[key].append(cpu)
                walls[key].append(wall)
            print(f"round {r} {key}: {cpu:.2f} CPU s, {wall:.2f} wall s", flush=True)
    rows = []
    base = statistics.median(times[("full", "sdpa", False)])
    for key, ts in times.items():
        head, kernel, trunk = key
        med = statistics.median(ts)
        params = sum(p.numel() for p in models[key][0].parameters())
        rows.append({"head": "(trunk only)" if trunk else head, "attention": kernel, "parameters": params,
                     "median_cpu_s": med, "min_cpu_s": min(ts), "median_wall_s": statistics.median(walls[key]),
                     "steps_timed": len(ts), "speedup_vs_full_sdpa": base / med})
    result = {"command": "nice -n 5 compressor-world-model " + " ".join(sys.argv[1:]),
              "shape": {"batch": args.batch_size, "frames": args.context_frames, "tokens": 128, "dim": args.dim,
                        "depth": args.depth, "heads": args.heads, "codebook": 15360},
              "precision": "bf16 autocast", "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "rows": rows}
    md = ["# World-model training step by head and attention kernel", "",
          f"One AdamW step, batch {args.batch_size} windows of {args.context_frames} frames x 128 tokens, width "
          f"{args.dim}, {args.depth} blocks, bf16 autocast, {torch.get_num_threads()} threads; "
          f"configurations interleaved, {args.rounds} timed rounds, median CPU seconds of the process (the CPU "
          f"was shared with other runs: the wall column means little). Machine: {result['machine']}.", "",
          f"Command: `{result['command']}`", "",
          "| head | attention | parameters | median CPU s/step | min CPU s/step | speed-up vs full + sdpa "
          "| median wall s/step |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['head']} | {r['attention']} | {r['parameters'] / 1e6:.2f}M | {r['median_cpu_s']:.2f} | "
                  f"{r['min_cpu_s']:.2f} | {r['speedup_vs_full_sdpa']:.2f}x | {r['median_wall_s']:.1f} |")
    md = "\n".join(md) + "\n"
    print(md)
    from compressor.benchmark import write_report

    write_report(args.output, "bench-step", result, md)
    return result



def search(args) -> dict:
    """``compressor-world-model bench-search``: states/s of the ar-digits head's argmax and temperature-1 sampling,
    enumerating the codebook (the old way) against the branch-and-bound search and ancestral sampling, on the
    teacher-forced states of a trained checkpoint over real val windows (a random model's near-uniform states are
    the search's worst case, not its use). Writes ``bench-search.json`` and ``bench-search.md``."""
    import torch.nn.functional as F

    from compressor.benchmark import write_report
    from compressor.worldmodel.data import TokenWindows, read_segments
    from compressor.worldmodel.module import load

    torch.set_num_threads(args.threads)
    model, _, _ = load(args.checkpoint)
    head, T = model.head, model.config.context_frames
    segments, _ = read_segments(args.val)
    windows = TokenWindows(segments, T, stride=T)
    batch = torch.stack([windows[i * len(windows) // args.windows] for i in range(args.windows)])  # (B, T, N)
    B, _, N = batch.shape
    with torch.no_grad():
        states = model(batch.reshape(B, T * N)[:, :-1])[:, N - 1 :].reshape(-1, model.config.dim)  # (S, D)
        timed = {}
        for name, fn in (
                ("argmax, enumerated", lambda: torch.cat([lp.argmax(-1) for lp in head._chunks(states)])),
                ("argmax, branch and bound", lambda: head.argmax(states)),
                ("sample t=1, enumerated", lambda: torch.multinomial(torch.cat(
                    [F.softmax(lp, -1) for lp in head._chunks(states)]), 1).squeeze(-1)),
                ("sample t=1, ancestral", lambda: head.sample(states, 1.0, None))):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            timed[name] = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0, "tokens": out}
    same = int((timed["argmax, enumerated"]["tokens"] == timed["argmax, branch and bound"]["tokens"]).sum())
    rows = [{"method": k, "states": len(states), "cpu_s": v["cpu_s"], "wall_s": v["wall_s"],
             "states_per_cpu_s": len(states) / v["cpu_s"]} for k, v in timed.items()]
    result = {"command": "compressor-world-model " + " ".join(sys.argv[1:]), "checkpoint": args.checkpoint,
              "val": args.val, "states": len(states), "argmax_agree": same, "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "rows": rows}
    md = ["# ar-digits head: argmax and sampling speed", "",
          f"{len(states)} teacher-forced states ({args.windows} windows of {T} frames of {args.val}, frames 2..{T}) "
          f"of `{args.checkpoint}`, {args.threads} thread(s), CPU seconds of the process (the CPU may be shared: "
          f"wall times mean little). The search's argmax equals the enumeration's on {same} of {len(states)} "
          f"states. Machine: {result['machine']}.", "", f"Command: `{result['command']}`", "",
          "| method | CPU s | states per CPU s |", "|---|---|---|"]
    md += [f"| {r['method']} | {r['cpu_s']:.2f} | {r['states_per_cpu_s']:.0f} |" for r in rows]
    md = "\n".join(md) + "\n"
    print(md)
    write_report(args.output, "bench-search", result, md)
    return result
