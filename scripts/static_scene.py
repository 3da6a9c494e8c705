"""A long static scene from real frames: one val frame held for N frames with +-1 grey-level noise, tokenized.

    python scripts/static_scene.py --checkpoint MODEL --video VAL_CLIP --frames 600 --output DIR

Writes DIR/static.npy (T, h, w) and DIR/static.json (commaVQ layout, read by ``compressor.tools.entropy report``).
The noise stands in for sensor noise on a parked car: the tokens still flicker where a code boundary is close.
"""

import argparse
import json
import os

import numpy as np
import torch

from compressor.codec.autoencoder import load
from compressor.codec.checkpoint import model_id
from compressor.codec.packing import tokens_crc32
from compressor.data.video import iter_frames, preprocess
from compressor.latents.commavq import commavq_dtype
from compressor.latents.samples import seal_meta

ap = argparse.ArgumentParser()
ap.add_argument("--checkpoint", required=True)
ap.add_argument("--video", required=True)
ap.add_argument("--frames", type=int, default=600)
ap.add_argument("--output", required=True)
args = ap.parse_args()
model = load(args.checkpoint).eval()
frame = preprocess(next(iter_frames(args.video)), model.image_size)  # uint8 (3, H, W)
g = torch.Generator().manual_seed(0)
tokens = []
with torch.no_grad():
    for start in range(0, args.frames, 32):
        n = min(32, args.frames - start)
        noise = torch.randint(-1, 2, (n, *frame.shape), generator=g)
        tokens.append(model.encode((frame[None].long() + noise).clamp(0, 255).to(torch.uint8)))
tokens = torch.cat(tokens).numpy()
h, w = model.grid
os.makedirs(args.output, exist_ok=True)
np.save(os.path.join(args.output, "static.npy"), tokens.reshape(-1, h, w).astype(commavq_dtype(model.codebook_size)))
meta = {"source": f"static: first frame of {os.path.basename(args.video)} held, +-1 noise", "segment": 0,
        "codebook_size": model.codebook_size, "token_layout": f"{h}x{w} row-major", "model_id": model_id(model),
        "num_frames": len(tokens), "num_tokens": h * w, "tokens_crc32": tokens_crc32(tokens)}
with open(os.path.join(args.output, "static.json"), "wb") as f:
    f.write(seal_meta(meta))
print(f"{len(tokens)} frames; {np.mean(tokens[1:] == tokens[:-1]):.3f} of tokens repeat the previous frame")
