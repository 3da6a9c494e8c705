"""(d) ``TokenPrior``: a learned prior over whole tokens (the whole codebook, not digits), for VQ codebooks.

A VQ index's digits mean nothing, so the digit-wise temporal prior (c) spends its capacity on structure that is not
there (on VQ tokens it loses to lzma). This prior predicts, at every position, a distribution over the whole
codebook from the previous ``context`` frames' tokens around it and from the frame's tokens coded so far, in two
checkerboard phases: phase A (even row + column) sees only the past; phase B also sees phase A's tokens, its four
neighbours among them. Most tokens repeat the previous frame's (67-99% on the dashcam clips), so the head also emits
a gate added to the logit of the previous frame's token at that position: a learned "copy" component.

Exactness works as for (c): encoder and decoder evaluate the network through the same per-frame, per-phase calls
(batch of one, one CPU thread), and the float32 probabilities become integer CDFs by float64 floor arithmetic
(``coding.quantized_cdfs``). The same torch build on the same CPU kernels decodes exactly; anything else is caught
by the token CRC of the segment header.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.entropy.coding import Decoder, Encoder, TableSet, quantized_cdfs
from compressor.entropy.priors import Prior, _Block, one_thread

# A frame codes N symbols of the whole codebook: one 16-bit CDF of K + 2 entries per token and phase, built in
# Python lists for compressai. Past a few thousand codes that dominates the time; FSQ's 15,360 codes use (c).
MAX_CODES = 4096


class TokenPrior(Prior):
    """(d) p(frame t | frames t-K..t-1) over whole tokens, in two checkerboard phases (see the module docstring).

    Args:
        codebook_size: codes (2 .. MAX_CODES).
        grid: the token grid (h, w), row-major.
        model_id: the compressor whose tokens these are.
        context: previous frames seen.
        dim: feature width.
        depth: residual 3x3 conv blocks on the token grid.
    """

    kind = "token"
    network_passes = 3  # the past frames' features, then each checkerboard phase

    def __init__(self, codebook_size: int, grid: tuple[int, int], model_id: str = "", context: int = 2,
                 dim: int = 64, depth: int = 2):
        if not 2 <= codebook_size <= MAX_CODES:
            raise ValueError(f"the token prior codes 2..{MAX_CODES} codes, got {codebook_size}; larger codebooks "
                             "(FSQ) use the digit-wise temporal prior")
        # One "digit" of radix K: the whole token. The value K marks a missing frame (as in the temporal prior).
        super().__init__(codebook_size, [codebook_size], grid, model_id)
        self.context, self.dim, self.depth = context, dim, depth
        k = codebook_size
        self.past = nn.Embedding(context * (k + 1), dim)
        self.motion = nn.Embedding(3, dim)  # the last two frames: same token, different, one missing
        self.current = nn.Embedding(k + 1, dim)  # this frame's coded tokens; k = not coded yet
        self.state = nn.Embedding(3, dim)  # this frame: not coded yet, repeated the previous token, changed
        self.trunk = nn.Sequential(*[_Block(dim) for _ in range(depth)])
        self.head = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, k + 1, 1))
        rows, cols = np.divmod(np.arange(self.num_tokens), self.grid[1])
        self.register_buffer("_phase_b", torch.from_numpy((rows + cols) % 2 == 1), persistent=False)

    @property
    def init_args(self) -> dict:
        return {"codebook_size": self.codebook_size, "grid": list(self.grid), "model_id": self.model_id,
                "context": self.context, "dim": self.dim, "depth": self.depth}

    def _grid(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, D, h, w), tokens row-major on the grid
        return x.transpose(1, 2).reshape(x.shape[0], self.dim, *self.grid)

    def past_features(self, past: Tensor) -> Tensor:
        """past tokens (B, K, N, 1), codebook_size = missing -> (B, N, D)."""
        past = past[..., 0]
        k = torch.arange(self.context, device=past.device).view(1, -1, 1) * (self.codebook_size + 1)
        e = self.past(past + k).sum(1)
        if self.context > 1:
            missing = (past[:, -1] == self.codebook_size) | (past[:, -2] == self.codebook_size)
            e = e + self.motion(torch.where(missing, 2, (past[:, -1] != past[:, -2]).long()))
        return e

    def phase_logits(self, e: Tensor, past: Tensor, current: Tensor, phase: int) -> Tensor:
        """Logits (B, N, codebook) for phase 0 (A) or 1 (B) from the past features (B, N, D), the past (B, K, N, 1)
        and the frame's tokens (B, N, 1), of which only phase A's are read, and only in phase 1."""
        last = past[:, -1, :, 0]
        cur = current[..., 0]
        known = self._phase_b.logical_not().expand_as(cur) if phase else torch.zeros_like(cur, dtype=torch.bool)
        shown = torch.where(known, cur, self.codebook_size)
        state = torch.where(known, 1 + (cur != last).long(), 0)
        x = self._grid(e + self.current(shown) + self.state(state))
        out = self.head(self.trunk(x)).flatten(2).transpose(1, 2)  # (B, N, codebook + 1)
        copy = F.one_hot(last, self.codebook_size + 1)[..., :-1]  # zero when the previous frame is missing
        return out[..., :-1] + out[..., -1:] * copy

    def nll_bits(self, past: Tensor, current: Tensor) -> Tensor:
        """Ideal bits per frame (B,) of ``current`` (B, N, 1) given ``past`` (B, K, N, 1) (teacher-forced)."""
        e = self.past_features(past)
        nll = 0
        for phase in (0, 1):
            ce = F.cross_entropy(self.phase_logits(e, past, current, phase).transpose(1, 2), current[..., 0],
                                 reduction="none")  # (B, N)
            mine = self._phase_b if phase else self._phase_b.logical_not()
            nll = nll + (ce * mine).sum(1)
        return nll / math.log(2)

    def past_of(self, tokens: Tensor, t: int) -> Tensor:
        """The ``context`` frames before frame t of tokens (T, N), missing ones flagged: (1, K, N, 1)."""
        missing = torch.full((self.num_tokens,), self.codebook_size, dtype=torch.long)
        frames = [tokens[t - k] if t - k >= 0 else missing for k in range(self.context, 0, -1)]
        return torch.stack(frames)[None, ..., None]

    @torch.no_grad()
    def bits(self, tokens: Tensor) -> Tensor:
        tokens = tokens.long()
        past = torch.cat([self.past_of(tokens, t) for t in range(len(tokens))])
        return self.nll_bits(past, tokens[..., None]).double()

    # Encoder and decoder make exactly these calls, frame by frame and phase by phase, on one thread.
    def _phase_tables(self, e: Tensor, past: Tensor, current: Tensor, phase: int, at: Tensor) -> TableSet:
        probs = torch.softmax(self.phase_logits(e, past, current, phase).float(), -1)[0, at]
        return TableSet(list(quantized_cdfs(probs)))

    def _phases(self) -> list[Tensor]:
        return [torch.nonzero(~self._phase_b)[:, 0], torch.nonzero(self._phase_b)[:, 0]]

    @torch.no_grad()
    def encode(self, tokens: Tensor, enc: Encoder) -> None:
        self.check_tokens(tokens)
        tokens = tokens.long()
        with one_thread():
            for t in range(len(tokens)):
                past = self.past_of(tokens, t)
                e = self.past_features(past)
                for phase, at in enumerate(self._phases()):
                    tables = self._phase_tables(e, past, tokens[t : t + 1, :, None], phase, at)
                    enc.encode(tokens[t, at].numpy(), np.arange(len(at)), tables)

    @torch.no_grad()
    def decode(self, dec: Decoder, num_frames: int) -> Tensor:
        tokens = torch.zeros(num_frames, self.num_tokens, dtype=torch.long)
        with one_thread():
            for t in range(num_frames):
                past = self.past_of(tokens, t)
                e = self.past_features(past)
                for phase, at in enumerate(self._phases()):
                    tables = self._phase_tables(e, past, tokens[t : t + 1, :, None], phase, at)
                    tokens[t, at] = torch.from_numpy(dec.decode(np.arange(len(at)), tables))
        return tokens
