"""Small helpers shared across the package, each defined once. Imports only the standard library and torch.

- ``rank_world`` / ``consumer``: which slice of the data this process (DDP rank x DataLoader worker) reads.
- ``buffer_shuffle``: a seeded streaming shuffle for iterable datasets.
- ``atomic_write``: write to a temporary name, then rename, so a killed job never leaves half a file.
- ``open_checked``: open a file only if it is a regular file of a bounded size (never a device or a FIFO).
- ``load_json``: ``json.loads`` whose too deeply nested input is a ``ValueError``, not a ``RecursionError``;
  ``write_json``: a JSON file written atomically.
- ``to_unit`` / ``to_uint8``: uint8 frames to the float range models read, and back.
- ``batched``: a function over slices of a batch.
- ``cosine`` / ``wsd``: the learning-rate multipliers of the two schedules (half-cosine; warm-up, stable, decay).
- ``token_entropy_bits``: the entropy of a token histogram (training, evaluation, the world-model example).
- ``resolve_device``: what ``--device auto`` (every command's default) means.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import stat
from collections.abc import Iterator

import torch
from torch.utils.data import get_worker_info


def rank_world() -> tuple[int, int]:
    """(rank, world size): from ``torch.distributed`` when it is initialised, else torchrun's ``RANK`` and
    ``WORLD_SIZE`` (set before a process group exists, e.g. in DataLoader workers or ``encode.py``), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def consumer() -> tuple[int, int]:
    """This reader's index among all (rank x worker) readers, and their number."""
    (rank, world), (wid, nw) = rank_world(), worker()
    return rank * nw + wid, world * nw


def buffer_shuffle(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """Yield ``items`` in a random order drawn from a buffer of ``buffer_size`` (seeded by ``rng``)."""
    buffer: list = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        j = rng.randrange(buffer_size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """``with atomic_write(path) as tmp: write(tmp)``: ``tmp`` is renamed to ``path`` only if the block succeeds,
    so readers never see half a file and a re-run after a kill finds either the old file or the new one."""
    tmp = f"{os.fspath(path)}{suffix}"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def open_checked(path: str | os.PathLike, max_bytes: int):
    """``open(path, "rb")`` if ``path`` is a regular file (symlinks followed) of at most ``max_bytes``; otherwise
    ``ValueError``: a model file that is a device (a symlink to /dev/zero never ends) or far larger than any model
    is refused before a byte is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: opening a FIFO must not wait for a writer
    st = os.fstat(fd)  # of the file opened, so it cannot be swapped after the check
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"larger than {max_bytes:,} bytes"
        raise ValueError(f"{path} is {what}; refused before reading it")
    return os.fdopen(fd, "rb")  # O_NONBLOCK means nothing to a regular file


def load_json(data: bytes | str):
    """``json.loads(data)``; ``ValueError`` for anything it cannot parse, also JSON nested too deeply for Python's
    recursion limit (``[[[[...``), which ``json`` reports as a ``RecursionError`` that no reader expects."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """``obj`` as JSON at ``path``, written atomically (``atomic_write``): every report, manifest and settings file."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)


def to_unit(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 frames -> ``dtype`` (float32 unless a caller computes in the dtype of its other input) in [-1, 1], what
    every model here reads; ``to_uint8`` is the way back."""
    return frames.to(dtype) / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] (clamped to it) -> uint8 frames, rounded: the inverse of ``to_unit``."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def batched(fn, *tensors: torch.Tensor, size: int) -> torch.Tensor:
    """``fn`` over slices of ``size`` items (the first axis) of ``tensors`` at once, its results concatenated: the
    result of one call in bounded memory."""
    return torch.cat([fn(*(t[i : i + size] for t in tensors)) for i in range(0, len(tensors[0]), size)])


def cosine(progress: float, floor: float = 0.0) -> float:
    """Half-cosine decay from 1 at ``progress`` 0 to ``floor`` at 1 (progress is clamped to [0, 1])."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def wsd(progress: float, cooldown_fraction: float, floor: float = 0.0) -> float:
    """Warm-up-stable-decay's multiplier after warm-up: 1 until the last ``cooldown_fraction`` of training, then a
    straight line down to ``floor`` at ``progress`` 1 (clamped to [0, 1]).

    The stable phase does not depend on the run's length, so a checkpoint taken in it is also the start of the
    cool-down of any shorter run: one long run plus short cool-downs gives a whole quality-against-images curve.
    """
    progress = min(max(progress, 0.0), 1.0)
    start = 1.0 - cooldown_fraction
    if progress <= start or cooldown_fraction <= 0:
        return 1.0
    return 1.0 - (1.0 - floor) * (progress - start) / cooldown_fraction


def token_entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """counts: (codebook_size,) token histogram -> its entropy in bits, a 0-dim tensor (0 for an empty one)."""
    p = counts.double() / counts.sum().clamp_min(1)
    p = p[p > 0]
    return -(p * p.log2()).sum()


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda[:i]`` and ``cpu`` are checked and returned.

    ``ValueError`` for CUDA without a GPU, or any other name."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but CUDA is not available to torch {torch.__version__} "
                         f"(CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto")
    if device.split(":")[0] not in ("cuda", "cpu"):
        raise ValueError(f"unknown device {device!r}; use cuda, cpu or auto")
    return device


def num_params(module) -> int:
    """Parameters of an ``nn.Module`` (buffers not counted)."""
    return sum(p.numel() for p in module.parameters())
