"""Export latent shards to commaVQ's layout: one ``<key>.npy`` (T, grid_h, grid_w) + ``<key>.json`` per segment.

    python -m compressor.tools.commavq --input data/latents/ --output data/latents-commavq/

See ``compressor.latents.commavq`` for the layout; commaVQ's own files are read by ``LatentDataset`` as they are.
"""

from __future__ import annotations

import argparse
import sys

from compressor.latents.commavq import export
from compressor.latents.shards import DamagedShardError


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
