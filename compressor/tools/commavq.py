"""Export latent shards to commaVQ's layout: one ``<key>.npy`` (T, grid_h, grid_w) + ``<key>.json`` per segment.

    python -m compressor.tools.commavq --input data/latents/ --output data/latents-commavq/

See ``compressor.latents.commavq`` for the layout and its reader; commaVQ's own files are read by ``LatentDataset``
as they are.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import sys
from collections.abc import Sequence

import numpy as np

from compressor.latents.commavq import commavq_dtype
from compressor.latents.find import check_against_manifests, check_output_apart, expand_urls
from compressor.latents.groups import is_video
from compressor.latents.manifest import MANIFEST, MAX_MANIFEST_BYTES, read_manifest
from compressor.latents.samples import (DamagedShardError, grid_of, open_meta, sample_key, seal_meta,
                                        segment_model_id)
from compressor.latents.shards import read_segments
from compressor.utils import atomic_write, open_checked, write_json


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
        write_json(os.path.join(output, MANIFEST), listing)
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
                    held = segment_model_id(open_meta(f.read(), sidecar))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.commavq", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, nargs="+", help="latent shards: encode.py's output folder, globs, .tar")
    ap.add_argument("--output", required=True, help="folder for <key>.npy (T, H, W) and <key>.json")
    ap.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="token grid, for shards whose metadata lack token_layout")
    ap.add_argument("--codebook-size", type=int, default=None,
                    help="codebook size, for shards whose metadata lack codebook_size")
    ap.add_argument("--prior", default=None, help="prior file, for shards that hold only entropy-coded tokens")
    args = ap.parse_args(argv)
    try:
        counts = export(args.input, args.output, tuple(args.grid) if args.grid else None, args.codebook_size,
                        args.prior)
    except (FileNotFoundError, ValueError, DamagedShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grid = counts["grid"] or ("?", "?")
    print(f"{counts['segments']} segments, {counts['frames']} frames -> {args.output} "
          f"({counts['dtype']} (T, {grid[0]}, {grid[1]}) per segment)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
