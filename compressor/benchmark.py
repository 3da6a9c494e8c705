"""Benchmark helpers, each defined once, for ``tools.bench``, ``tools.bench_train``, ``tools.bench_encode`` and
``training.perf``. Imports only the standard library and torch (plus ``compressor.utils``).

- ``seconds_per_call``: ``torch.utils.benchmark.Timer`` on every thread torch uses (its default is one), which
  synchronizes the GPU around each timed block.
- ``sync``: wait for a CUDA device, for timings taken by hand (decode/encode splits).
- ``rss_mb`` / ``peak_rss_mb``: resident and high-water memory of this process (and its children).
- ``run_isolated``: each case in a fresh process, so memory peaks and compiled graphs never mix.
- ``device_name`` / ``cpu_flags``: the device in words and the CPU's fast-path flags, for report headers.
- ``write_report``: ``NAME.json`` and ``NAME.md``, each written atomically.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
from collections.abc import Callable

import torch
from torch.utils import benchmark

from compressor.utils import atomic_write, write_json


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], min_time: float, warmup: int = 1) -> float:
    """Mean seconds per call of ``fn()`` over at least ``min_time`` seconds of blocks, after ``warmup`` calls
    (kernel selection, compilation, optimizer state)."""
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).mean


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb(children: bool = False) -> float:
    """High-water resident memory of this process (or the larger of it and its children's), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak / 1024


def _case(fn: Callable[..., dict], kwargs: dict, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    queue.put(fn(**kwargs))


def run_isolated(fn: Callable[..., dict], cases: list[dict], threads: int,
                 log: Callable[[dict], None] | None = None) -> list[dict]:
    """``[fn(**case) for case in cases]``, each call in a fresh spawned process on ``threads`` threads.

    ``fn`` must be importable (a module-level function); ``log(row)`` is called as each row arrives."""
    ctx = mp.get_context("spawn")
    rows = []
    for kwargs in cases:
        queue = ctx.Queue()
        proc = ctx.Process(target=_case, args=(fn, kwargs, threads, queue))
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
        if log:
            log(row)
    return rows


def cpu_flags() -> dict:
    """The CPU's model name and the flags that decide its fast paths (from ``/proc/cpuinfo``, as ``lscpu``)."""
    info = {"model": None, "flags": []}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and info["model"] is None:
                    info["model"] = value.strip()
                elif key.strip() == "flags":
                    info["flags"] = sorted(set(value.split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                                                "amx_tile", "avx512_fp16", "avx_vnni"})
                    break
    except OSError:
        pass
    return info


def device_name(device: str, threads: int, precision: str | None = None) -> str:
    """The device in words, with the precision measured in (default: bf16 on CUDA, float32 on the CPU)."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} ({precision or 'bf16'})"
    return f"{cpu_flags()['model'] or 'CPU'}, {threads} threads ({precision or 'float32'})"


def write_report(output: str, name: str, result: dict, markdown: str) -> list[str]:
    """``output/NAME.json`` and ``output/NAME.md``, each renamed into place when complete; returns their paths."""
    os.makedirs(output, exist_ok=True)
    paths = [os.path.join(output, f"{name}.json"), os.path.join(output, f"{name}.md")]
    write_json(paths[0], result)
    with atomic_write(paths[1]) as tmp, open(tmp, "w") as f:
        f.write(markdown)
    return paths
