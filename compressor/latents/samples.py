"""One sample of the latent format: its key, its sealed json and its tokens, and the checks of each on reading.

The shard format around samples is ``compressor.latents.shards``; the manifests beside shards are
``compressor.latents.manifest``; commaVQ-layout files (a ``.npy`` of tokens and the same json beside it) are
``compressor.latents.commavq``. All of them check a sample's json and tokens with ``open_meta`` and
``check_sample_tokens`` here, and report damage as ``DamagedShardError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from compressor.codec.packing import tokens_crc32
from compressor.latents.groups import check_video, is_video
from compressor.utils import load_json


TOKEN_DTYPE = np.dtype("<u2")


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


def meta_int(meta: dict, key: str, where: str) -> int | None:
    value = meta.get(key)
    if value is not None and (type(value) is not int or value < 0):
        raise DamagedSampleError(f"{where}: metadata {key} is {value!r}, not a count")
    return value


def open_meta(data: bytes, where: str) -> dict:
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


def check_sample_tokens(tokens: np.ndarray, meta: dict, where: str) -> None:
    """Tokens (T, N) against what the metadata says about them."""
    frames, num_tokens = meta_int(meta, "num_frames", where), meta_int(meta, "num_tokens", where)
    codebook, crc = meta_int(meta, "codebook_size", where), meta_int(meta, "tokens_crc32", where)
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


_LAYOUT = re.compile(r"^(\d+)x(\d+)\b")


def grid_of(meta: dict, grid: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """(grid_h, grid_w) from a sample's ``token_layout`` ("8x16 row-major"), else ``grid``."""
    match = _LAYOUT.match(str(meta.get("token_layout", "")))
    return (int(match.group(1)), int(match.group(2))) if match else grid
