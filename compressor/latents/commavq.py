"""commaVQ's token layout: export our latents to it (``python -m compressor.tools.commavq``). Reading commaVQ
``.npy`` files is ``compressor.latents.shards.read_commavq``, so ``read_segments`` takes them beside our shards.

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

import glob
import hashlib
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from compressor.latents.groups import is_video
from compressor.latents.find import check_against_manifests, check_output_apart, expand_urls
from compressor.latents.shards import (MANIFEST, MAX_MANIFEST_BYTES, DamagedShardError, _open_meta, grid_of,
                                       read_manifest, read_segments, sample_key, seal_meta, segment_model_id)
from compressor.utils import atomic_write, open_checked


def commavq_dtype(codebook_size: int) -> np.dtype:
    """The narrowest signed little-endian integer type that holds tokens in [0, codebook_size).

    Signed, because commaVQ's files and tools use int16: an unsigned type would load fine but change the dtype
    that code written for commaVQ's files sees (uint16 arithmetic wraps where int16 code expects negatives).
    """
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype).newbyteorder("<")
    raise ValueError(f"codebook of {codebook_size} codes does not fit int64")


def export(shards: str | Sequence[str], output: str, grid: tuple[int, int] | None = None,
           codebook_size: int | None = None, prior: str | None = None) -> dict:
    """Write every segment of latent shards as ``<key>.npy`` (T, grid_h, grid_w) + ``<key>.json``; returns counts.

    ``grid`` and ``codebook_size`` are needed only for shards whose samples lack ``token_layout`` or
    ``codebook_size`` (encode.py writes both). Shards are verified as ``LatentDataset`` verifies them (manifest,
    CRCs); coded-only samples need the ``prior`` that coded them.
    """
    if prior is not None:
        from compressor.entropy.stream import load_prior

        prior = load_prior(prior)
    urls = expand_urls(shards)
    expected, problems = check_against_manifests(shards, urls)
    if problems:
        raise problems[0][1]
    check_output_apart(urls, output)
    listed: dict[str, str] = {}  # up front where encode.py's manifests list the videos: one source, one folder
    for directory in sorted({os.path.dirname(os.path.abspath(url)) for url in urls}):
        for source in (read_manifest(directory) or {"videos": {}})["videos"]:
            if listed.setdefault(source, directory) != directory:
                raise ValueError(f"{listed[source]} and {directory} both hold {source!r}: their files would share "
                                 "names; export them into separate folders")
    os.makedirs(output, exist_ok=True)
    listing = read_manifest(output) or {"videos": {}, "shards": {}}
    segments = frames = 0
    dtype, layout, model = None, None, None
    written: dict[str, str] = {}  # key -> the shard its segment came from, in this run
    for url in urls:
        if url.endswith(".npy"):
            raise ValueError(f"{url} is already a commaVQ-layout file")
        for seg in read_segments(url, prior=prior, expected=expected.get(url)):
            tokens, meta = seg["tokens"].numpy(), seg["meta"]
            if is_video(meta):  # commaVQ's readers know one token grid a frame, not groups of two kinds of frames
                raise ValueError(f"{url} holds video-mode tokens (intra and conditional frames); commaVQ's layout "
                                 "holds per-frame tokens only")
            if model is None:
                model = segment_model_id(meta)
                check_export_folder(output, model, listing)
            elif segment_model_id(meta) != model:
                raise ValueError(f"{url} holds tokens of model {segment_model_id(meta) or '(unnamed)'}, the shards "
                                 f"before it of model {model or '(unnamed)'}: export one model's latents per folder")
            h, w = grid_of(meta, grid) or (None, None)
            if h is None or h * w != tokens.shape[1]:
                raise ValueError(f"{url}: {tokens.shape[1]} tokens per frame on grid {(h, w)}; pass --grid H W")
            codebook = meta.get("codebook_size", codebook_size)
            if codebook is None:
                raise ValueError(f"{url}: no codebook_size in the metadata; pass --codebook-size")
            if layout not in (None, (h, w, codebook)):
                raise ValueError(f"{url}: grid or codebook differs from the earlier segments; export one model's "
                                 "latents per folder")
            layout, dtype = (h, w, codebook), commavq_dtype(codebook)
            key = sample_key(meta.get("source", os.path.basename(url)), int(meta.get("segment", segments)))
            if written.setdefault(key, url) != url:  # two encode runs' clip.mp4: one file would replace the other
                raise ValueError(f"{url} and {written[key]} both hold segment {meta.get('segment')} of "
                                 f"{meta.get('source')!r} (file {key}.npy): export them into separate folders")
            # The json says what the reader cannot guess: grid and codebook (so both are always written).
            meta = {**meta, "token_layout": meta.get("token_layout", f"{h}x{w} row-major"), "codebook_size": codebook}
            # The json first: a .npy without its json would read as commaVQ's codebook, so it must never exist.
            with atomic_write(os.path.join(output, key + ".json")) as tmp, open(tmp, "wb") as f:
                f.write(seal_meta(meta))
            buffer = io.BytesIO()
            np.save(buffer, tokens.reshape(len(tokens), h, w).astype(dtype))  # (T, N) -> (T, H, W)
            with atomic_write(os.path.join(output, key + ".npy")) as tmp, open(tmp, "wb") as f:
                f.write(buffer.getvalue())
            listing["shards"][key + ".npy"] = {"sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
                                               "bytes": len(buffer.getvalue()), "samples": 1}
            segments, frames = segments + 1, frames + len(tokens)
    if model is not None:
        # Last, so a killed export leaves files its manifest does not list: refused on reading, redone by a re-run.
        listing["model_id"] = model
        with atomic_write(os.path.join(output, MANIFEST)) as tmp, open(tmp, "w") as f:
            json.dump(listing, f, indent=1)
    return {"segments": segments, "frames": frames, "dtype": str(dtype), "grid": layout[:2] if layout else None}


def check_export_folder(output: str, model: str, listing: dict) -> None:
    """Refuse to export tokens of ``model`` into a folder that holds another model's: by its manifest, else by the
    json beside each ``.npy`` (a ``.npy`` without one is commaVQ's own)."""
    held = listing.get("model_id")
    where = os.path.join(output, MANIFEST)
    if held is None:
        for path in sorted(glob.glob(os.path.join(output, "*.npy"))):
            sidecar = path[:-4] + ".json"
            try:
                with open_checked(sidecar, MAX_MANIFEST_BYTES) as f:
                    held = segment_model_id(_open_meta(f.read(), sidecar))
            except FileNotFoundError:
                held = "commavq"
            except (DamagedShardError, ValueError) as e:
                raise ValueError(f"{output} holds files that are not this export's: {e}") from e
            where = path
            if held != model:
                break
    if held is not None and held != model:
        raise ValueError(f"{output} holds tokens of model {held or '(unnamed)'} ({where}), and these latents are of "
                         f"model {model or '(unnamed)'}: export into another folder")
