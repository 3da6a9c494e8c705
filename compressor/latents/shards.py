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

commaVQ-layout ``.npy`` files (commaVQ's own, and the exports of ``compressor.latents.commavq``) are read here too
(``read_commavq``), so ``read_segments`` takes either.

Samples written before these checksums existed are checked for structure, dtype, shape and range only.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import numpy as np
import torch

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the entropy coder (compressai's rANS) is imported only when a coded sample is met
    from compressor.entropy.priors import Prior
from compressor.codec.packing import token_bits, tokens_crc32
from compressor.latents.groups import check_video, is_video
from compressor.utils import load_json, open_checked

MANIFEST = "manifest.json"
# Bounds for open_checked: far above any real file, far below what would hang a reader or exhaust its memory. A
# shard is streamed, so its bound only says that it is a file that ends.
MAX_MANIFEST_BYTES, MAX_NPY_BYTES, MAX_SHARD_BYTES = 1 << 30, 1 << 30, 1 << 40
TOKEN_DTYPE = np.dtype("<u2")
_TAIL_BYTES = 1 << 16  # more than tarfile reads ahead of the member it parses (one 10 KiB record)


class DamagedShardError(RuntimeError):
    """A latent shard, or a sample in it, could not be read completely and correctly."""


class DamagedSampleError(DamagedShardError):
    """One sample is damaged; the shard around it is intact, so reading can go on past it."""


class MissingPriorError(ValueError):
    """A sample holds only entropy-coded tokens and no prior was given to decode them."""


# ---- writing -------------------------------------------------------------------------------------------------
def video_key(source: str) -> str:
    """A name for a video (its path relative to the input root): readable, without dots, and distinct for distinct
    paths (``a/clip.mp4`` and ``b/clip.mp4``, ``a b.mp4`` and ``a_b.mp4``, ``x.mp4`` and ``x.MP4``)."""
    readable = re.sub(r"[^0-9A-Za-z_-]", "_", source)[-80:]
    return f"{readable}-{hashlib.sha256(os.fsencode(source)).hexdigest()[:12]}"


def sample_key(source: str, segment: int) -> str:
    """A tar key for a segment of a video."""
    return f"{video_key(source)}-{segment:04d}"


def _meta_crc(meta: dict) -> int:
    return zlib.crc32(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())


def seal_meta(meta: dict) -> bytes:
    """A sample's json: ``meta`` plus ``meta_crc32``, a CRC-32 of its canonical form, checked on read."""
    body = {k: v for k, v in meta.items() if k != "meta_crc32"}
    return json.dumps({**body, "meta_crc32": _meta_crc(body)}).encode()


def make_sample(tokens: np.ndarray, meta: dict, ctok: bytes | None = None, plain: bool = True) -> dict:
    """One webdataset sample in this format: tokens (T, N), optionally coded, and sealed metadata.

    ``meta`` must hold ``source`` and ``segment``; the token count and checksum are added here.
    """
    meta = {**meta, "num_frames": len(tokens), "num_tokens": tokens.shape[1], "tokens_crc32": tokens_crc32(tokens)}
    sample = {"__key__": sample_key(meta["source"], meta["segment"])}
    if plain:
        sample["tokens.npy"] = tokens.astype(TOKEN_DTYPE)
    if ctok is not None:
        sample["tokens.ctok"] = ctok
    sample["json"] = seal_meta(meta)
    return sample


def read_manifest(directory: str) -> dict | None:
    """``manifest.json`` merged with the per-rank manifests of a job still running or killed; None if none.

    They must agree: on the model, on the input root, and on every shard that two of them list (so a sha256
    changed in ``manifest.json`` is caught while a rank manifest still lists the shard). A video that two of them
    list (a failed video retried, say) takes the later entry, unless only the earlier one's shard exists.
    """
    paths = [os.path.join(directory, MANIFEST), *sorted(glob.glob(os.path.join(directory, "manifest.rank-*.json")))]
    merged, found, agreed = {"videos": {}, "shards": {}}, False, {"model_id": {}, "root": {}}

    def has_shard(entry: dict) -> bool:
        return bool(entry.get("shard")) and os.path.exists(os.path.join(directory, entry["shard"]))

    for path in filter(os.path.exists, paths):
        try:
            with open_checked(path, MAX_MANIFEST_BYTES) as f:  # never a FIFO or /dev/zero
                part = load_json(f.read())
            for name, entry in part["shards"].items():
                if merged["shards"].setdefault(name, entry) != entry:
                    raise DamagedShardError(f"{directory}: the manifests disagree about shard {name} "
                                            f"({os.path.basename(path)} and an earlier one); one was edited or "
                                            "damaged")
            for rel, entry in part["videos"].items():
                old = merged["videos"].get(rel)
                if old is None or old == entry or has_shard(entry) or not has_shard(old):
                    merged["videos"][rel] = entry
            for key, values in agreed.items():
                if part.get(key):
                    values[part[key]] = path
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DamagedShardError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from e
        found = True
    for key, values in agreed.items():
        if len(values) > 1:
            what = "models" if key == "model_id" else "input roots"
            raise DamagedShardError(f"{directory}: manifests of different {what}: "
                                    + ", ".join(f"{m} in {os.path.basename(p)}" for m, p in values.items()))
        if values:
            merged[key] = next(iter(values))
    return merged if found else None


def segment_model_id(meta: dict) -> str:
    """The model whose tokens a segment holds: its ``model_id``; ``"commavq"`` for commaVQ's own files; ``""``
    where nothing says (shards written by hand, or before samples named their model)."""
    return str(meta.get("model_id") or ("commavq" if meta.get("format") == "commavq" else ""))


# ---- reading -------------------------------------------------------------------------------------------------
def read_npy(f: BinaryIO, size: int, dtypes: Sequence[np.dtype]) -> np.ndarray:
    """The array in an .npy stream of ``size`` bytes; ``ValueError`` unless its header is sound, which is checked
    before anything is allocated: a known format version, one of ``dtypes`` (so never pickled objects), and a
    data size that the stream actually holds."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read_header(f)
    except Exception as e:  # numpy parses the header as a Python literal: SyntaxError, TokenError, ... on garbage
        raise ValueError(f"unreadable .npy header ({type(e).__name__}: {e})") from e
    if dtype not in dtypes:
        raise ValueError(f"dtype {dtype.str}, expected {' or '.join(d.str for d in dtypes)}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != size - f.tell():
        raise ValueError(f"header claims shape {shape} ({nbytes} bytes); the file holds {size - f.tell()} bytes")
    array = np.frombuffer(f.read(nbytes), dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _meta_int(meta: dict, key: str, where: str) -> int | None:
    value = meta.get(key)
    if value is not None and (type(value) is not int or value < 0):
        raise DamagedSampleError(f"{where}: metadata {key} is {value!r}, not a count")
    return value


def _open_meta(data: bytes, where: str) -> dict:
    try:
        meta = load_json(data)
    except ValueError as e:
        raise DamagedSampleError(f"{where}: unreadable json ({e})") from e
    if not isinstance(meta, dict):
        raise DamagedSampleError(f"{where}: json is a {type(meta).__name__}, not an object")
    if "meta_crc32" in meta and _meta_crc({k: v for k, v in meta.items() if k != "meta_crc32"}) != meta["meta_crc32"]:
        raise DamagedSampleError(f"{where}: metadata fail their checksum")
    if not isinstance(meta.get("source", ""), str) or type(meta.get("segment", 0)) is not int:
        raise DamagedSampleError(f"{where}: metadata source or segment of the wrong type")
    return meta


def _check_tokens(tokens: np.ndarray, meta: dict, where: str) -> None:
    """Tokens (T, N) against what the metadata says about them."""
    frames, num_tokens = _meta_int(meta, "num_frames", where), _meta_int(meta, "num_tokens", where)
    codebook, crc = _meta_int(meta, "codebook_size", where), _meta_int(meta, "tokens_crc32", where)
    if tokens.ndim != 2 or (frames is not None and len(tokens) != frames) or (
            num_tokens is not None and tokens.shape[1] != num_tokens):
        raise DamagedSampleError(f"{where}: tokens shaped {tokens.shape}; metadata says ({frames}, {num_tokens})")
    if codebook is not None and tokens.size and (tokens.min() < 0 or tokens.max() >= codebook):
        raise DamagedSampleError(f"{where}: tokens in [{tokens.min()}, {tokens.max()}], outside the codebook of "
                                 f"{codebook}")
    if crc is not None and tokens_crc32(tokens) != crc:
        raise DamagedSampleError(f"{where}: tokens fail their checksum")
    indices = meta.get("frame_indices")
    if indices is not None and (not isinstance(indices, list) or len(indices) != len(tokens)
                                or any(type(i) is not int for i in indices)):
        raise DamagedSampleError(f"{where}: frame_indices do not list one frame index per frame")
    if type(meta.get("first_frame", 0)) is not int:
        raise DamagedSampleError(f"{where}: first_frame is not a frame index")
    if "mode" in meta:
        if not is_video(meta):
            raise DamagedSampleError(f"{where}: mode {meta['mode']!r}; this reader knows per-frame samples (no mode) "
                                     "and video-mode ones")
        try:
            check_video(tokens, meta)
        except ValueError as e:
            raise DamagedSampleError(f"{where}: video-mode sample: {e}") from e


def _is_setting_error(e: Exception) -> bool:
    """A missing or wrong prior: a wrong setting, not a damaged shard. (No PriorMismatchError can have been raised
    if the entropy coder was never imported.)"""
    stream = sys.modules.get("compressor.entropy.stream")
    return isinstance(e, MissingPriorError) or (stream is not None and isinstance(e, stream.PriorMismatchError))


def _sample(url: str, key: str, entry: dict, prior: Prior | None) -> dict:
    where = f"{url}: sample {key}"
    if "json" not in entry or not ("tokens.npy" in entry or "tokens.ctok" in entry):
        raise DamagedSampleError(f"{where}: incomplete (has {sorted(entry)})")
    meta = _open_meta(entry["json"], where)
    if "tokens.ctok" in entry and (prior is not None or "tokens.npy" not in entry):
        from compressor.entropy.stream import PriorMismatchError, StreamError, decode_segment, read_header

        try:  # an adaptive segment needs no prior; the fitted priors' segments need theirs
            if prior is None and read_header(entry["tokens.ctok"])["prior"] != "adaptive":
                raise MissingPriorError(f"{where} holds only entropy-coded tokens; pass the prior file that coded "
                                        "them (LatentDataset(..., prior=...))")
            tokens = decode_segment(entry["tokens.ctok"], prior, num_frames=_meta_int(meta, "num_frames", where))
        except PriorMismatchError:
            raise  # a wrong setting, not damage
        except StreamError as e:
            raise DamagedSampleError(f"{where}: {e}") from e
        _check_tokens(tokens.numpy(), meta, where)
        return {"tokens": tokens, "meta": meta}
    data = entry["tokens.npy"]
    try:
        tokens = read_npy(io.BytesIO(data), len(data), [TOKEN_DTYPE])
    except ValueError as e:
        raise DamagedSampleError(f"{where}: tokens.npy: {e}") from e
    _check_tokens(tokens, meta, where)
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


# ---- commaVQ files --------------------------------------------------------------------------------------------
COMMAVQ_CODEBOOK = 1024
COMMAVQ_GRID = (8, 16)
COMMAVQ_FPS = 20.0
# commaVQ's files: every integer dtype in either byte order (np.load would take them all; read_npy refuses anything else, so never
# a pickled object array).
INTEGER_DTYPES = tuple(np.dtype(f"{order}{kind}{size}") for order in "<>" for kind in "iu" for size in (1, 2, 4, 8))
_LAYOUT = re.compile(r"^(\d+)x(\d+)\b")


def grid_of(meta: dict, grid: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """(grid_h, grid_w) from a sample's ``token_layout`` ("8x16 row-major"), else ``grid``."""
    match = _LAYOUT.match(str(meta.get("token_layout", "")))
    return (int(match.group(1)), int(match.group(2))) if match else grid


def read_commavq(path: str, expected: dict | None = None) -> dict:
    """A commaVQ-layout ``.npy`` -> ``{"tokens": int64 (T, N), "meta": dict}``, as ``read_segments`` yields.

    tokens: any integer dtype, (T, H, W) or (T, H * W) -> int64 (T, H * W), row-major. With a ``.json`` beside the
    file (an export of ours), it gives the grid and codebook and is checked like a shard sample's; otherwise the
    file is commaVQ's: an 8x16 grid of a 1024-code codebook at 20 fps. ``expected``: its entry in the folder's
    manifest (sha256, bytes).
    """
    sidecar = path[:-4] + ".json"
    try:
        with open_checked(path, MAX_NPY_BYTES) as f:
            data = f.read()
        tokens = read_npy(io.BytesIO(data), len(data), INTEGER_DTYPES)
        meta_bytes = None
        if os.path.lexists(sidecar):
            with open_checked(sidecar, MAX_MANIFEST_BYTES) as f:
                meta_bytes = f.read()
    except (ValueError, OSError, EOFError) as e:
        raise DamagedShardError(f"{path}: damaged commaVQ token file ({e})") from e
    if meta_bytes is None:
        meta = {"source": os.path.basename(path), "segment": 0, "first_frame": 0, "fps": COMMAVQ_FPS,
                "codebook_size": COMMAVQ_CODEBOOK, "token_layout": "{}x{} row-major".format(*COMMAVQ_GRID),
                "format": "commavq"}
        origin = "commaVQ's codebook (no .json beside the file says otherwise)"
    else:
        meta = _open_meta(meta_bytes, sidecar)
        origin = f"the codebook of {os.path.basename(sidecar)}"
    grid = grid_of(meta)
    if grid is None:
        raise DamagedShardError(f"{sidecar}: no token_layout, so the grid of {path} is unknown")
    h, w = grid
    if (tokens.ndim == 3 and tokens.shape[1:] == (h, w)) or (tokens.ndim == 2 and tokens.shape[1] == h * w):
        tokens = tokens.reshape(len(tokens), h * w)  # (T, H, W) -> (T, N), row-major like our tokens
    else:
        raise DamagedShardError(f"{path}: expected tokens shaped (T, {h}, {w}) or (T, {h * w}), got {tokens.shape}")
    codebook = meta.get("codebook_size")
    if type(codebook) is not int or codebook < 1:
        raise DamagedShardError(f"{sidecar}: codebook_size is {codebook!r}, so the tokens of {path} cannot be checked")
    # Compared before any cast: an out-of-range uint64 would wrap negative in int64.
    if tokens.size and (tokens.min() < 0 or tokens.max() >= codebook):
        raise DamagedShardError(f"{path}: tokens in [{tokens.min()}, {tokens.max()}], outside {origin} of "
                                f"{codebook} codes")
    tokens = tokens.astype(np.int64)
    if meta_bytes is not None:
        try:
            _check_tokens(tokens, meta, sidecar)  # shape against num_frames, codebook, token CRC, frame indices
        except DamagedSampleError as e:
            raise DamagedShardError(str(e)) from e
    # Last, as for a shard: the checks above name what is wrong more precisely than a digest can.
    for field, value in {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}.items():
        if expected is not None and field in expected and expected[field] != value:
            raise DamagedShardError(f"{path}: {field} {value} where the manifest says {expected[field]}")
    meta.setdefault("bits_per_token", token_bits(codebook))
    return {"tokens": torch.from_numpy(tokens), "meta": meta}


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
