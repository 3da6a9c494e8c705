"""A tiny next-frame token model trained on LatentDataset: proof that the loader is usable, not a product.

    python examples/world_model.py --input data/latents --steps 300 [--val-input val/latents]

Each window of T frames x N tokens is flattened in raster order and a small causal transformer predicts every
token of frames 2..T from everything before it. It prints its cross-entropy next to the unigram baseline (the
entropy of the token distribution), which any model that uses context must beat. With ``--val-input`` it also
scores held-out latents (every window, in order): bits per token and bits per frame, the numbers that compare two
token formats of the same clips (per-frame against video-mode tokens).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from compressor.codec.layers import Block
from compressor.latents import LatentDataset
from compressor.utils import token_entropy_bits


class TinyWorldModel(nn.Module):
    def __init__(self, vocab: int, seq_tokens: int, dim: int = 128, depth: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_tokens, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, L) -> logits (B, L, vocab) for the next token at each position."""
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True)
        return self.head(self.norm(x))


def unigram_bits(dataset: LatentDataset, vocab: int, max_windows: int = 2000) -> float:
    counts = torch.zeros(vocab)
    for i, item in enumerate(dataset):
        counts += torch.bincount(item["tokens"][1:].flatten(), minlength=vocab)[:vocab].float()
        if i >= max_windows:
            break
    return token_entropy_bits(counts).item()


def next_frame_loss(model: TinyWorldModel, tokens: torch.Tensor, n_tokens: int, vocab: int) -> torch.Tensor:
    """tokens: (B, T, N) -> mean cross-entropy in nats of the tokens of frames 2..T given everything before them."""
    flat = tokens.flatten(1)  # (B, T*N), raster order
    logits = model(flat[:, :-1])
    # Frame 1 has no past to predict from: score only frames 2..T.
    return F.cross_entropy(logits[:, n_tokens - 1 :].reshape(-1, vocab), flat[:, n_tokens:].reshape(-1))


@torch.no_grad()
def evaluate(model: TinyWorldModel, shards, seq_len: int, stride: int | None, n_tokens: int, vocab: int,
             batch_size: int) -> dict:
    """Bits per predicted token and per predicted frame over every window of ``shards`` (in order)."""
    model.eval()
    total_bits, count = 0.0, 0
    for batch in DataLoader(LatentDataset(shards, seq_len=seq_len, stride=stride), batch_size=batch_size):
        tokens = batch["tokens"]
        if tokens.shape[-1] != n_tokens:
            raise ValueError(f"validation latents have {tokens.shape[-1]} tokens a frame, training ones {n_tokens}")
        scored = tokens[:, 1:].numel()
        total_bits += next_frame_loss(model, tokens, n_tokens, vocab).item() / math.log(2) * scored
        count += scored
    model.train()
    if not count:
        raise ValueError(f"no window of {seq_len} frames in {shards}")
    return {"val_bits_per_token": total_bits / count, "val_bits_per_frame": total_bits / count * n_tokens,
            "val_tokens": count}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, nargs="+", help="latent shards: encode.py's output folder, globs, .tar, commaVQ .npy")
    ap.add_argument("--val-input", nargs="+", help="held-out latent shards to score after training")
    ap.add_argument("--output", help="write the result as JSON here")
    ap.add_argument("--seq-len", type=int, default=2, help="frames per window")
    ap.add_argument("--stride", type=int, default=None,
                    help="frames between window starts (default: 1, or the group length of video-mode latents, "
                         "whose windows must start at an intra frame)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=2**14, help="codebook size (16384 covers every 14-bit codebook)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    dataset = LatentDataset(args.input, seq_len=args.seq_len, stride=args.stride, shuffle=True, seed=0)
    first = next(iter(dataset))
    n_tokens = first["tokens"].shape[1]
    vocab = args.vocab
    baseline = unigram_bits(LatentDataset(args.input, seq_len=args.seq_len, stride=args.stride), vocab)
    model = TinyWorldModel(vocab, args.seq_len * n_tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    step, losses = 0, []
    while step < args.steps:
        dataset.set_epoch(step)
        for batch in DataLoader(dataset, batch_size=args.batch_size):
            loss = next_frame_loss(model, batch["tokens"], n_tokens, vocab)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item() / math.log(2))
            step += 1
            if step % 50 == 0 or step == args.steps:
                recent = sum(losses[-20:]) / len(losses[-20:])
                print(f"step {step}: {recent:.3f} bits/token (unigram baseline {baseline:.3f})")
            if step >= args.steps:
                break
    final = sum(losses[-20:]) / len(losses[-20:])
    print(f"final {final:.3f} bits/token vs unigram {baseline:.3f}: "
          f"{'below' if final < baseline else 'NOT below'} the baseline")
    result = {"final_bits": final, "unigram_bits": baseline}
    if args.val_input:
        result.update(evaluate(model, args.val_input, args.seq_len, args.stride, n_tokens, vocab, args.batch_size))
        print(f"val: {result['val_bits_per_token']:.3f} bits/token, {result['val_bits_per_frame']:.1f} bits/frame "
              f"({result['val_tokens']} tokens scored)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({**result, "args": vars(args)}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
