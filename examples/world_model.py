"""How to use ``compressor.worldmodel`` from Python: train a small token world model, score it on held-out latents.

    python examples/world_model.py --train ../shared/latents/recipe-48k/train --val ../shared/latents/recipe-48k/val \\
        --steps 300

The reference model, its scores against the baselines and its futures come from the command line tool instead:
``compressor-world-model train|score|generate|probe`` (docs/world-model.md).
"""

from __future__ import annotations

import argparse

from compressor.worldmodel import WorldModelConfig
from compressor.worldmodel.data import read_segments, split_holdout, unigram_counts
from compressor.worldmodel.module import train
from compressor.worldmodel.score import model_bits, unigram_bits


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="latent folder (encode.py's output or commaVQ-layout .npy)")
    ap.add_argument("--val", required=True, help="held-out latent folder")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--output", default="runs/world-model-example")
    args = ap.parse_args(argv)

    segments, fmt = read_segments(args.train)  # verified reads through LatentDataset; fmt: codebook, grid, digits
    fit, holdout = split_holdout(segments, 0.1)  # whole cameras held out for early stopping
    config = WorldModelConfig(fmt.codebook_size, fmt.num_tokens, fmt.radices, context_frames=4, dim=128, depth=2,
                              heads=4)
    model, facts = train(fit, holdout, fmt, config, args.output, max_steps=args.steps, val_every=100)

    val, _ = read_segments(args.val)
    rows = model_bits(model, val)  # {source: [bits, correct argmaxes, tokens]} over every frame with a past
    tokens = sum(r[2] for r in rows.values())
    unigram = unigram_bits(unigram_counts(segments, fmt.codebook_size))
    result = {"val_bits_per_token": sum(r[0] for r in rows.values()) / tokens,
              "unigram_bits_per_token": float(sum(unigram[s.tokens[1:]].sum() for s in val)) / tokens,
              "val_tokens": tokens, "steps": facts["steps"]}
    print(f"val: {result['val_bits_per_token']:.3f} bits/token, unigram {result['unigram_bits_per_token']:.3f} "
          f"({tokens} tokens)")
    return result


if __name__ == "__main__":
    main()
