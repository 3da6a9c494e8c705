"""The latent shard format that ``encode.py`` writes and ``LatentDataset`` reads, and how every read is verified.

A shard is a plain tar (``webdataset`` reads it) of samples, one per segment of one video::

    <key>.json           metadata: source (the video's path relative to the input root), segment, num_frames,
                         num_tokens, codebook_size, tokens_crc32, ..., and meta_crc32 over all the rest
    <key>.tokens.npy     uint16 (T, N), little-endian; video-mode samples (``mode: "video"``) pad each conditional
                         frame's tokens to N with zeros (``compressor.latents.groups``)
    <key>.tokens.ctok    optional: the same tokens entropy-coded (``compressor.entropy.stream``); with the
                         adaptive prior (encode.py's default) it decodes with no prior file

A key is the source path made safe (webdataset splits a member name at its first dot, so no dots) plus a hash of
the exact path, so distinct videos never share one. ``manifest.json`` beside the shards lists each shard's
sha256, size and sample count.

Reading checks all it can, and a failure names the shard and the sample (``DamagedShardError``):

- a sample: its json (``meta_crc32``), the .npy header before anything is allocated (dtype, shape against
  ``num_frames`` and ``num_tokens``, byte count), the token range against ``codebook_size``, ``tokens_crc32``,
  and for coded tokens the stream's own checks;
- a shard: the tar structure up to a proper end-of-archive marker (``tarfile`` alone takes a damaged header or a
  cut at a member boundary for the end), unique keys, and, where a manifest lists it, its sha256, size and
  sample count. Those are known only at the shard's end, after its earlier samples were yielded: each of those
  was already checked on its own.

``read_segments`` takes commaVQ-layout ``.npy`` files too (commaVQ's own, and our exports to its layout), through
``compressor.latents.commavq.read_commavq``. One sample's format and checks are ``compressor.latents.samples``; the
manifests, ``compressor.latents.manifest``.

Samples written before these checksums existed are checked for structure, dtype, shape and range only.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from compressor.latents.commavq import read_commavq
from compressor.latents.samples import (TOKEN_DTYPE, DamagedSampleError, DamagedShardError, MissingPriorError,
                                        check_sample_tokens, meta_int, open_meta, read_npy)
from compressor.utils import open_checked

if TYPE_CHECKING:  # the entropy coder (compressai's rANS) is imported only when a coded sample is met
    from compressor.entropy.priors import Prior

# A bound for open_checked: a shard is streamed, so it only says that it is a file that ends.
MAX_SHARD_BYTES = 1 << 40
_TAIL_BYTES = 1 << 16  # more than tarfile reads ahead of the member it parses (one 10 KiB record)


def _is_setting_error(e: Exception) -> bool:
    """A missing or wrong prior: a wrong setting, not a damaged shard. (No PriorMismatchError can have been raised
    if the entropy coder was never imported.)"""
    stream = sys.modules.get("compressor.entropy.stream")
    return isinstance(e, MissingPriorError) or (stream is not None and isinstance(e, stream.PriorMismatchError))


def _sample(url: str, key: str, entry: dict, prior: Prior | None) -> dict:
    where = f"{url}: sample {key}"
    if "json" not in entry or not ("tokens.npy" in entry or "tokens.ctok" in entry):
        raise DamagedSampleError(f"{where}: incomplete (has {sorted(entry)})")
    meta = open_meta(entry["json"], where)
    if "tokens.ctok" in entry and (prior is not None or "tokens.npy" not in entry):
        from compressor.entropy.stream import PriorMismatchError, StreamError, decode_segment, read_header

        try:  # an adaptive segment needs no prior; the fitted priors' segments need theirs
            if prior is None and read_header(entry["tokens.ctok"])["prior"] != "adaptive":
                raise MissingPriorError(f"{where} holds only entropy-coded tokens; pass the prior file that coded "
                                        "them (LatentDataset(..., prior=...))")
            tokens = decode_segment(entry["tokens.ctok"], prior, num_frames=meta_int(meta, "num_frames", where))
        except PriorMismatchError:
            raise  # a wrong setting, not damage
        except StreamError as e:
            raise DamagedSampleError(f"{where}: {e}") from e
        check_sample_tokens(tokens.numpy(), meta, where)
        return {"tokens": tokens, "meta": meta}
    data = entry["tokens.npy"]
    try:
        tokens = read_npy(io.BytesIO(data), len(data), [TOKEN_DTYPE])
    except ValueError as e:
        raise DamagedSampleError(f"{where}: tokens.npy: {e}") from e
    check_sample_tokens(tokens, meta, where)
    return {"tokens": torch.from_numpy(tokens.astype(np.int64)), "meta": meta}


class _TrackedStream:
    """A byte stream that hashes and counts what passes through it and keeps its last bytes, so that once tarfile
    stops, the rest of the shard can be checked and the whole compared with the manifest."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0
        self._chunks: list[bytes] = []  # the last chunks read, at least _TAIL_BYTES of them when there are

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        self._chunks.append(data)
        while len(self._chunks) > 1 and sum(map(len, self._chunks[1:])) >= _TAIL_BYTES:
            self._chunks.pop(0)
        return data

    def rest_is_end_marker(self, offset: int) -> bool:
        """Whether everything from ``offset`` to the end is zeros, at least the two 512-byte end blocks."""
        seen, tail = self.size - offset, b"".join(self._chunks)
        if seen < 0 or seen > len(tail) or any(tail[len(tail) - seen :]):
            return False
        while chunk := self.read(1 << 20):
            if any(chunk):
                return False
        return self.size - offset >= 1024


def read_segments(url: str, prior: Prior | None = None, expected: dict | None = None,
                  on_damaged: Callable[[DamagedShardError], None] | None = None) -> Iterator[dict]:
    """Yield ``{"tokens": int64 (T, N), "meta": dict}`` for every segment in a shard or commaVQ file, verified.

    A sample holds plain tokens (``tokens.npy``), an entropy-coded segment (``tokens.ctok``) or both. With a
    ``prior`` the coded form is decoded (and checked by its CRCs); without one the plain form is read.
    ``expected`` is the shard's manifest entry (sha256, bytes, samples). A damaged sample goes to ``on_damaged``
    and reading goes on; without it, and for damage to the shard itself, ``DamagedShardError`` is raised.
    """
    command = url.startswith("pipe:") and not os.path.exists(url)  # a file is read, whatever its name
    if url.endswith(".npy") and not command:
        yield read_commavq(url, expected)
        return
    key, count = None, 0
    try:
        if command:
            import webdataset as wds

            raw = wds.gopen(url)
        else:
            raw = open_checked(url, MAX_SHARD_BYTES)  # a FIFO or /dev/zero would never end
        stream = _TrackedStream(raw)
        with raw, tarfile.open(fileobj=stream, mode="r|") as tar:
            seen: set[str] = set()
            entry: dict = {}
            for member in tar:  # a sample's files are contiguous in the tar
                if not member.isfile():
                    continue
                directory, base = os.path.split(member.name)
                name, _, ext = base.partition(".")  # webdataset's rule: the key ends at the first dot
                name = os.path.join(directory, name)
                if name != key:
                    if entry:
                        yield from _checked(url, key, entry, prior, on_damaged)
                    if name in seen:
                        raise DamagedShardError(f"{url}: sample key {name} appears twice")
                    seen.add(name)
                    key, entry, count = name, {}, count + 1
                if ext in entry:
                    raise DamagedShardError(f"{url}: sample {key} has two {ext} files")
                entry[ext] = tar.extractfile(member).read()
            if entry:
                yield from _checked(url, key, entry, prior, on_damaged)
            if not stream.rest_is_end_marker(tar.offset):
                raise DamagedShardError(f"{url}: the tar ends without its end-of-archive marker after sample {key} "
                                        f"(a damaged header, or a file cut short)")
    except (tarfile.TarError, EOFError, ValueError, OSError) as e:
        if _is_setting_error(e):
            raise  # a wrong setting, not a damaged shard
        raise DamagedShardError(f"{url}: damaged latent shard after sample {key} ({type(e).__name__}: {e})") from e
    if expected is not None:
        found = {"bytes": stream.size, "sha256": stream.sha256.hexdigest(), "samples": count}
        for field, value in found.items():
            if field in expected and expected[field] != value:
                raise DamagedShardError(f"{url}: {field} {value} where the manifest says {expected[field]}")


def _checked(url: str, key: str, entry: dict, prior: Prior | None,
             on_damaged: Callable[[DamagedShardError], None] | None) -> Iterator[dict]:
    try:
        segment = _sample(url, key, entry, prior)
    except DamagedSampleError as e:
        if on_damaged is None:
            raise
        on_damaged(e)
        return
    yield segment
