"""commaVQ's token layout: reading its ``.npy`` files (``read_commavq``, which ``read_segments`` calls for them, so
they load beside our shards), and the integer type our exports use (``commavq_dtype``). Exporting our latents to it
is ``python -m compressor.tools.commavq``.

commaVQ (github.com/commaai/commavq) keeps one ``.npy`` per one-minute segment of driving: tokens of a 1024-code
VQ on an 8x16 grid, int16 (1200, 8, 16) in its dataset release and int64 (1200, 128) in its example
``examples/tokens.npy``. The reader takes either: any integer dtype, (T, H, W) or (T, H * W).

Exported folders hold ``<key>.npy`` (T, grid_h, grid_w) in the narrowest *signed* integer type that holds
``codebook_size - 1`` (int16 for our 14-bit codebook, as commaVQ uses) and, beside each, ``<key>.json``: the very
metadata of the shard sample it came from (source, segment, frame indices, model id, codebook size, token CRC),
sealed by its own CRC. A ``.json`` beside a ``.npy`` is what tells the reader the codebook size and grid of tokens
that are not commaVQ's; without one, commaVQ's (1024 codes, 8x16, 20 fps) are assumed. An export also writes
``manifest.json`` (each ``.npy`` with its sha256, size and the model id), so that a deleted or added file is
noticed on reading, and it refuses a folder that holds another model's tokens.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import torch

from compressor.codec.packing import token_bits
from compressor.latents.manifest import MAX_MANIFEST_BYTES
from compressor.latents.samples import (DamagedSampleError, DamagedShardError, check_sample_tokens, grid_of,
                                        open_meta, read_npy)
from compressor.utils import open_checked

# A bound for open_checked: far above any real token file, far below what would exhaust a reader's memory.
MAX_NPY_BYTES = 1 << 30
COMMAVQ_CODEBOOK = 1024
COMMAVQ_GRID = (8, 16)
COMMAVQ_FPS = 20.0

# commaVQ's files: every integer dtype in either byte order (np.load would take them all; read_npy refuses anything
# else, so never a pickled object array).
INTEGER_DTYPES = tuple(np.dtype(f"{order}{kind}{size}") for order in "<>" for kind in "iu" for size in (1, 2, 4, 8))


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
        meta = open_meta(meta_bytes, sidecar)
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
            check_sample_tokens(tokens, meta, sidecar)  # shape against num_frames, codebook, token CRC, frame indices
        except DamagedSampleError as e:
            raise DamagedShardError(str(e)) from e
    # Last, as for a shard: the checks above name what is wrong more precisely than a digest can.
    for field, value in {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}.items():
        if expected is not None and field in expected and expected[field] != value:
            raise DamagedShardError(f"{path}: {field} {value} where the manifest says {expected[field]}")
    meta.setdefault("bits_per_token", token_bits(codebook))
    return {"tokens": torch.from_numpy(tokens), "meta": meta}


def commavq_dtype(codebook_size: int) -> np.dtype:
    """The narrowest signed little-endian integer type that holds tokens in [0, codebook_size).

    Signed, because commaVQ's files and tools use int16: an unsigned type would load fine but change the dtype
    that code written for commaVQ's files sees (uint16 arithmetic wraps where int16 code expects negatives).
    """
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype).newbyteorder("<")
    raise ValueError(f"codebook of {codebook_size} codes does not fit int64")
