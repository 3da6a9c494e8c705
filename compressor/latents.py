"""Token latents for world models: ``LatentDataset`` streams fixed-length windows of frame tokens.

It reads the shards that ``encode.py`` writes (``tokens.npy`` uint16 (T, 128) + ``json`` per video segment) and
the public commaVQ token release (``*.npy`` int16 (1200, 8, 16), one file per segment).
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import tarfile
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from compressor.entropy.stream import PriorMismatchError, decode_segment, load_prior


class DamagedShardError(RuntimeError):
    """A latent shard could not be read completely."""


def expand_urls(shards: str | Sequence[str]) -> list[str]:
    """A directory, glob, brace pattern, ``pipe:``/``http`` URL or list of those -> a sorted list of URLs."""
    import braceexpand

    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    urls: list[str] = []
    for item in map(str, items):
        for url in braceexpand.braceexpand(item):
            if ":" in url.split("/")[0] and not os.path.exists(url):  # pipe:, http:, s3: ... pass through
                urls.append(url)
            elif os.path.isdir(url):
                urls += sorted(glob.glob(os.path.join(url, "*.tar")) + glob.glob(os.path.join(url, "*.npy")))
            elif any(c in url for c in "*?["):
                urls += sorted(glob.glob(url))
            elif os.path.exists(url):
                urls.append(url)
            else:
                raise FileNotFoundError(f"no such latent shard: {url}")
    if not urls:
        raise FileNotFoundError(f"no latent shards (*.tar, commaVQ *.npy) found in {shards!r}")
    return urls


class MissingPriorError(ValueError):
    """A sample holds only entropy-coded tokens and no prior was given to decode them."""


def read_segments(url: str, prior=None) -> Iterator[dict]:
    """Yield ``{"tokens": int64 (T, N), "meta": dict}`` for every segment in a shard or commaVQ file.

    A sample holds plain tokens (``tokens.npy``), an entropy-coded segment (``tokens.ctok``) or both. With a
    ``prior`` the coded form is decoded (and checked by its CRCs); without one the plain form is read.
    """
    if url.endswith(".npy") and not url.startswith("pipe:"):
        yield _commavq_segment(url)
        return
    try:
        if url.startswith("pipe:"):
            import webdataset as wds

            stream = wds.gopen(url)
        else:
            stream = open(url, "rb")
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            key, entry = None, {}
            for member in tar:  # a sample's files are contiguous in the tar
                if not member.isfile():
                    continue
                name, _, ext = member.name.partition(".")
                if name != key and entry:
                    yield _sample(url, key, entry, prior)
                    entry = {}
                key = name
                entry[ext] = tar.extractfile(member).read()
            if entry:
                yield _sample(url, key, entry, prior)
    except (tarfile.TarError, EOFError, ValueError, OSError) as e:
        if isinstance(e, (MissingPriorError, PriorMismatchError)):
            raise  # a wrong setting, not a damaged shard
        raise DamagedShardError(f"{url}: damaged latent shard ({type(e).__name__}: {e})") from e


def _sample(url: str, key: str, entry: dict, prior) -> dict:
    if "json" not in entry or not ("tokens.npy" in entry or "tokens.ctok" in entry):
        raise DamagedShardError(f"{url}: incomplete sample {key} (has {sorted(entry)})")
    meta = json.loads(entry["json"])
    if "tokens.ctok" in entry and (prior is not None or "tokens.npy" not in entry):
        if prior is None:
            raise MissingPriorError(f"{url}: sample {key} holds only entropy-coded tokens; pass the prior file that "
                                    "coded them (LatentDataset(..., prior=...))")
        return {"tokens": decode_segment(entry["tokens.ctok"], prior), "meta": meta}
    tokens = np.load(io.BytesIO(entry["tokens.npy"]))
    return {"tokens": torch.from_numpy(tokens.astype(np.int64)), "meta": meta}


def _commavq_segment(path: str) -> dict:
    try:
        tokens = np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise DamagedShardError(f"{path}: damaged commaVQ token file ({e})") from e
    if tokens.ndim != 3 or tokens.shape[1:] != (8, 16):
        raise DamagedShardError(f"{path}: expected commaVQ tokens shaped (T, 8, 16), got {tokens.shape}")
    meta = {"source": os.path.basename(path), "segment": 0, "first_frame": 0, "fps": 20.0,
            "codebook_size": 1024, "token_layout": "8x16 row-major", "format": "commavq"}
    return {"tokens": torch.from_numpy(tokens.reshape(len(tokens), -1).astype(np.int64)), "meta": meta}


class LatentDataset(IterableDataset):
    """Windows of ``seq_len`` consecutive frames of tokens, never crossing a segment boundary.

    Items are dicts: ``tokens`` int64 (T, N), ``source`` (str), ``segment`` (int), ``frame_index`` int64 (T,)
    (frame indices in the source video).

    Work is split by segment, round-robin over (DDP rank x DataLoader worker), in an order that every consumer
    derives from the same seed and epoch, so each window appears exactly once per epoch across all of them.

    Args:
        shards: latent shards (directory, glob, ``{a..b}`` pattern, ``pipe:`` URL, commaVQ ``*.npy``, or a list).
        seq_len: frames per window.
        stride: frames between the starts of consecutive windows.
        shuffle: shuffle segment order (seeded, per epoch) and windows (within a buffer).
        seed: base seed of the shuffles.
        epoch_length: if set, each consumer yields at most this many windows per epoch.
        skip_damaged: warn about and count damaged shards instead of raising.
        buffer_size: windows held for shuffling.
        prior: a prior file (or ``Prior``) to decode entropy-coded samples (``tokens.ctok``) with; without it,
            samples are read from their plain ``tokens.npy``.
    """

    def __init__(self, shards: str | Sequence[str], seq_len: int = 16, stride: int = 1, shuffle: bool = False,
                 seed: int = 0, epoch_length: int | None = None, skip_damaged: bool = False, buffer_size: int = 1000,
                 prior=None):
        super().__init__()
        if seq_len < 1 or stride < 1:
            raise ValueError(f"seq_len and stride must be >= 1, got {seq_len}, {stride}")
        self.urls = expand_urls(shards)
        self.seq_len, self.stride, self.shuffle, self.seed = seq_len, stride, shuffle, seed
        self.epoch_length, self.skip_damaged, self.buffer_size = epoch_length, skip_damaged, buffer_size
        self.epoch = 0
        self.damaged: list[str] = []
        self.prior = load_prior(prior) if isinstance(prior, (str, os.PathLike)) else prior

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (in the main process) to get a new shuffle."""
        self.epoch = epoch

    def _consumer(self) -> tuple[int, int]:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))
        world = (torch.distributed.get_world_size() if torch.distributed.is_initialized()
                 else int(os.environ.get("WORLD_SIZE", 1)))
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return rank * nw + wid, world * nw

    def _segments(self) -> Iterator[dict]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(urls)
        me, consumers = self._consumer()
        index = 0
        for url in urls:
            try:
                for segment in read_segments(url, prior=self.prior):
                    if index % consumers == me:
                        yield segment
                    index += 1
            except DamagedShardError as e:
                if not self.skip_damaged:
                    raise
                self.damaged.append(url)
                warnings.warn(f"skipping damaged shard ({len(self.damaged)} so far): {e}", stacklevel=2)

    def _windows(self) -> Iterator[dict]:
        for segment in self._segments():
            tokens, meta = segment["tokens"], segment["meta"]
            first = int(meta.get("first_frame", 0))
            frame_index = torch.as_tensor(meta.get("frame_indices", range(first, first + len(tokens))))
            for start in range(0, len(tokens) - self.seq_len + 1, self.stride):
                yield {"tokens": tokens[start : start + self.seq_len], "source": meta.get("source", ""),
                       "segment": int(meta.get("segment", 0)),
                       "frame_index": frame_index[start : start + self.seq_len]}

    def __iter__(self) -> Iterator[dict]:
        windows = self._windows()
        if self.shuffle:
            windows = buffer_shuffle(windows, self.buffer_size, random.Random(f"{self.seed}-{self.epoch}-{self._consumer()}"))
        for n, window in enumerate(windows):
            if self.epoch_length is not None and n >= self.epoch_length:
                return
            yield window


def buffer_shuffle(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """Yield ``items`` in a random order drawn from a buffer of ``buffer_size`` (seeded by ``rng``)."""
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        j = rng.randrange(buffer_size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer
