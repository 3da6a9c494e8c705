"""Frame shards for distributed training: every frame exactly once per epoch across all ranks and workers.

Each epoch, the shard order is shuffled with ``(seed, epoch)`` and the frames of the shards, in that order, form
one stream. The stream is cut into ``consumers = world_size x num_workers`` equal contiguous ranges (the fewer
than ``consumers`` frames left over are dropped for that epoch), so every rank gets the same number of batches and
DDP never waits on a rank that ran dry. A consumer reads only the shards its range touches and mixes its frames in
a seeded shuffle buffer; with ``interleave`` it first merges those shards' streams at random, so that a batch is not
mostly one clip. The order is a pure function of (seed, epoch, consumer), which is what makes an exact
resume possible: a consumer replays its stream and skips what was already trained on.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import tarfile
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from compressor.utils import buffer_shuffle, load_json, open_checked, rank_world, worker

SETTINGS = "make_shards.json"  # what compressor.tools.make_shards wrote a folder's shards with


def shard_settings(folder: str) -> dict | None:
    """The settings (frame size, stride, input root) ``make_shards`` recorded for ``folder``; None if it holds none."""
    path = os.path.join(folder, SETTINGS)
    if not os.path.lexists(path):
        return None
    with open_checked(path, 1 << 16) as f:
        return load_json(f.read())


def random_merge(streams: list[Iterator], sizes: list[int], rng: random.Random) -> Iterator:
    """Every item of ``streams`` (``sizes[i]`` items each), each stream's in order, merged at random: the next item
    comes from a stream with probability proportional to the items it has left, which makes every merge equally
    likely. ``sizes`` is used up (it counts what is left)."""
    for remaining in range(sum(sizes), 0, -1):
        # An integer draw over the items left (not float weights), so the order is exact on every platform.
        r, i = rng.randrange(remaining), 0
        while r >= sizes[i]:
            r -= sizes[i]
            i += 1
        sizes[i] -= 1
        yield next(streams[i])


def count_frames(url: str) -> int:
    """Frames (``*.frame.npy`` members) in a shard, from the tar headers only."""
    with tarfile.open(url) as tar:
        return sum(1 for m in tar if m.isfile() and m.name.endswith(".frame.npy"))


class FrameShards(IterableDataset):
    """uint8 frames (3, H, W) from ``compressor.tools.make_shards`` shards, split exactly across (rank x worker).

    Args:
        urls: shard files.
        batch_size: the DataLoader's batch size; each worker yields whole batches only (``len`` is in frames).
        num_workers: the DataLoader's workers (0 counts as 1: the main process reads), for ``len``.
        shuffle: shuffle shard order per epoch and frames within a buffer (training); off for validation.
        seed: base seed.
        buffer_size: frames held for shuffling.
        interleave: (training, needs ``shuffle``) a consumer opens every shard of its range at once and draws each
            next frame from one of them with probability proportional to the frames it has left (a uniformly random
            merge of their streams) before the shuffle buffer. Read in order, one shard is one clip, so a 512-frame
            buffer leaves a batch of 16 with 4.8 of 21 clips, where independent draws give 8.9
            (scripts/batch_clip_mix.py). The frames each consumer gets are the same either way; only their order
            changes. Off in the class; ``configs/base.yaml`` turns it on (+1.7 dB at 1.2e14 FLOPs, level at the two-hour
            1.85e15: docs/vit-vs-conv.md#interleaved-shards).
    """

    def __init__(self, urls: list[str], batch_size: int, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
                 buffer_size: int = 512, interleave: bool = False):
        super().__init__()
        if not urls:
            raise FileNotFoundError("no frame shards given")
        if interleave and not shuffle:
            raise ValueError("interleave mixes the training order; it needs shuffle=True")
        self.urls = sorted(urls)
        self.counts = [count_frames(u) for u in self.urls]
        self.batch_size, self.shuffle, self.seed, self.buffer_size = batch_size, shuffle, seed, buffer_size
        self.interleave = interleave
        # Shared memory, so that DataLoader workers (also persistent ones) see the epoch and the resume point
        # set in the main process: [epoch, batches of this epoch already trained on by this rank].
        self._state = torch.zeros(2, dtype=torch.long).share_memory_()
        self.num_workers = max(1, num_workers)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self._state[0], self._state[1] = epoch, skip_batches

    def frames_per_consumer(self, consumers: int) -> int:
        """Frames each consumer yields per epoch: an equal share, in whole batches."""
        return (sum(self.counts) // consumers) // self.batch_size * self.batch_size

    def __len__(self) -> int:
        """Frames this rank yields per epoch (all of its workers together)."""
        _, world = rank_world()
        return self.frames_per_consumer(world * self.num_workers) * self.num_workers

    def _shard_frames(self, s: int, lo: int, hi: int) -> Iterator[torch.Tensor]:
        """Frames [lo, hi) of shard ``s``, in file order; the shard's file is open only while this generator runs."""
        with tarfile.open(self.urls[s]) as tar:
            k = 0
            for member in tar:
                if not member.name.endswith(".frame.npy"):
                    continue
                if lo <= k < hi:
                    frame = np.load(io.BytesIO(tar.extractfile(member).read()))
                    yield torch.from_numpy(np.ascontiguousarray(frame))
                k += 1
                if k >= hi:
                    break

    def _range_slices(self, order: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
        """(shard, lo, hi) for each shard that frames [start, stop) of the epoch's stream (shards concatenated in
        ``order``) touch, in stream order: the range is those shards' frames [lo, hi) one after another."""
        slices, offset = [], 0
        for s in order:
            n = self.counts[s]
            if offset + n > start and offset < stop:
                slices.append((s, max(start - offset, 0), min(stop - offset, n)))
            offset += n
            if offset >= stop:
                break
        return slices

    def _range_frames(self, order: list[int], start: int, stop: int) -> Iterator[torch.Tensor]:
        """Frames [start, stop) of the epoch's stream (shards concatenated in ``order``), one shard after another."""
        for s, lo, hi in self._range_slices(order, start, stop):
            yield from self._shard_frames(s, lo, hi)

    def _interleaved_frames(self, order: list[int], start: int, stop: int,
                            rng: random.Random) -> Iterator[torch.Tensor]:
        """The frames of ``_range_frames``, each shard's in file order, merged at random: the next frame comes from a
        shard with probability proportional to the frames it has left, which makes every merge equally likely, so
        each shard is spread over the whole range rather than used up early. Every shard of the range is open until
        this generator ends (or is closed)."""
        slices = self._range_slices(order, start, stop)
        left = [hi - lo for _, lo, hi in slices]
        with contextlib.ExitStack() as stack:
            # closing() so that an abandoned epoch closes every shard's generator, and with it its tar file.
            streams = [stack.enter_context(contextlib.closing(self._shard_frames(s, lo, hi))) for s, lo, hi in slices]
            yield from random_merge(streams, left, rng)

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world = rank_world()
        worker_id, nw = worker()
        epoch, skip_batches = int(self._state[0]), int(self._state[1])
        # The DataLoader takes batch i from worker i % nw. After b batches the next one is due from stream b % nw,
        # but a new DataLoader asks worker 0 first; so worker w plays stream (w + b) % nw. Stream j has then given
        # b // nw batches, plus one if j < b % nw.
        wid = (worker_id + skip_batches) % nw
        me, consumers = rank * nw + wid, world * nw
        order = list(range(len(self.urls)))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
        per = self.frames_per_consumer(consumers)
        if self.interleave:
            mix = random.Random(f"{self.seed}-{epoch}-{me}-interleave")
            frames = self._interleaved_frames(order, me * per, (me + 1) * per, mix)
        else:
            frames = self._range_frames(order, me * per, (me + 1) * per)
        if self.shuffle:
            frames = buffer_shuffle(frames, self.buffer_size, random.Random(f"{self.seed}-{epoch}-{me}"))
        skip = (skip_batches // nw + (1 if wid < skip_batches % nw else 0)) * self.batch_size
        for i, frame in enumerate(frames):
            if i >= skip:
                yield frame
