"""The copy pointer: the world model's distribution as a mixture of its head and the previous frame's tokens.

    p(y) = g_gen * p_head(y) + sum_k g_k [c_k == y]

The candidates c_1..c_K (K = 9) are the previous frame's tokens in the 3x3 neighbourhood of the predicted position
on the token grid (h x w, row-major: neighbour (dr, dc) of position n of frame f is token f*N + n - N + dr*w + dc of
the flattened window, always before the predicted one, so causal). The gate (g_gen, g_1..g_K) is a softmax of one linear map of the
transformer state; neighbours outside the grid, and every candidate of a token with no previous frame, get gate
weight zero. It is a proper distribution over the codebook for any head (duplicate candidates add up).

Why: on near-static clips the head alone codes tokens at 3.78 bits/token where "copy the previous token with
p=0.70" gets 2.48. With 15,360 codes and 14k training frames the softmax never learns the identity map from the
copy hint to each code's logit; the pointer puts the mass on the previous token with one gate logit.

Everything is in float32 (the model trains under bf16 autocast; the gate's log-softmax should not be bf16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEG = float("-inf")


class CopyPointer(nn.Module):
    """Gate and candidates of the copy mixture, and the mixture's log-probs, exact argmax and samples.

    Args:
        dim: the transformer state's width.
        grid: (h, w) of the token grid, h * w = tokens per frame.
    """

    def __init__(self, dim: int, grid: list[int] | tuple[int, int]):
        super().__init__()
        gh, gw = grid
        N = gh * gw
        self.num_tokens = N
        rows, cols = torch.arange(N) // gw, torch.arange(N) % gw  # (N,)
        dr = torch.tensor([-1, -1, -1, 0, 0, 0, 1, 1, 1])
        dc = torch.tensor([-1, 0, 1, -1, 0, 1, -1, 0, 1])
        self.K = len(dr)
        self.center = 4  # candidate (0, 0): the previous frame's token at the predicted position itself
        inside = ((rows[:, None] + dr >= 0) & (rows[:, None] + dr < gh)
                  & (cols[:, None] + dc >= 0) & (cols[:, None] + dc < gw))  # (N, K)
        # Flat offset from a predicted token's index to each candidate's: one frame back, then the neighbour.
        self.register_buffer("offset", (dr * gw + dc - N).expand(N, -1).clone(), persistent=False)  # (N, K)
        self.register_buffer("inside", inside, persistent=False)
        self.gate = nn.Linear(dim, 1 + self.K)  # logits: (generator, candidate 1..K)

    def reset_gate(self, generator: float = 0.4, center: float = 0.5) -> None:
        """At the start: the same-position candidate ``center``, the generator ``generator``, the rest spread evenly,
        so that early training already copies (the weight is small, so the bias decides)."""
        rest = (1 - generator - center) / (self.K - 1)
        with torch.no_grad():
            self.gate.bias.fill_(math.log(rest))
            self.gate.bias[0] = math.log(generator)
            self.gate.bias[1 + self.center] = math.log(center)

    def candidates(self, seq: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """seq (B, L) a window's tokens (at least up to each predicted token's previous frame), pos (M,) absolute
        indices of predicted tokens -> candidates (B, M, K) and valid (M, K): inside the grid and with a previous
        frame. Invalid candidates read token 0 (their gate weight is zero)."""
        N = self.num_tokens
        idx = pos[:, None] + self.offset[pos % N]  # (M, K)
        valid = self.inside[pos % N] & (pos[:, None] >= N)
        cand = seq[:, idx.clamp(0, seq.shape[1] - 1)]  # (B, M, K)
        return cand.masked_fill(~valid, 0), valid

    def gate_log_probs(self, h: Tensor, valid: Tensor) -> Tensor:
        """h (..., D), valid (..., K) -> log (g_gen, g_1..g_K) (..., 1 + K), float32; no valid candidate: g_gen = 1."""
        with torch.autocast(h.device.type, enabled=False):
            logits = self.gate(h.float())
        mask = torch.cat([torch.ones_like(valid[..., :1]), valid], -1).expand_as(logits)
        return F.log_softmax(logits.masked_fill(~mask, NEG), -1)

    def log_probs(self, head: nn.Module, h: Tensor, cand: Tensor, valid: Tensor, tokens: Tensor) -> Tensor:
        """log p(token) of the mixture: h (..., D), cand (..., K), valid (..., K), tokens (...) -> (...)."""
        lg = self.gate_log_probs(h, valid)
        gen = lg[..., 0] + head.log_probs(h, tokens).float()
        copy = lg[..., 1:].masked_fill(cand != tokens.unsqueeze(-1), NEG)
        return torch.cat([gen.unsqueeze(-1), copy], -1).logsumexp(-1)

    def _mixed(self, lg: Tensor, head_lp: Tensor, cand: Tensor, ys: Tensor) -> Tensor:
        """The mixture's log-prob of tokens ys (..., J) whose head log-probs are head_lp (..., J)."""
        copy = lg[..., None, 1:].masked_fill(cand.unsqueeze(-2) != ys.unsqueeze(-1), NEG)  # (..., J, K)
        return torch.cat([(lg[..., :1] + head_lp).unsqueeze(-1), copy], -1).logsumexp(-1)

    def argmax(self, head: nn.Module, h: Tensor, cand: Tensor, valid: Tensor) -> Tensor:
        """The mixture's exact most likely token (...): the best of the valid candidates and the head's own argmax
        (any other token has only the generator's share, g_gen p_head(y) <= g_gen p_head(argmax))."""
        lg = self.gate_log_probs(h, valid)
        best = head.argmax(h)  # (...)
        ys = torch.cat([best.unsqueeze(-1), cand], -1)  # (..., 1 + K)
        mixed = self._mixed(lg, head.candidate_log_probs(h, ys).float(), cand, ys)
        mixed = torch.cat([mixed[..., :1], mixed[..., 1:].masked_fill(~valid, NEG)], -1)  # masked: no option
        return ys.gather(-1, mixed.argmax(-1, keepdim=True)).squeeze(-1)

    def full_log_probs(self, head: nn.Module, h: Tensor, cand: Tensor, valid: Tensor) -> Tensor:
        """The mixture over every code: h (B, D) -> (B, V), enumerating the head."""
        g = self.gate_log_probs(h, valid).exp()  # (B, 1 + K)
        p = g[:, :1] * head.full_log_probs(h).float().exp()
        p = p.scatter_add(-1, cand, g[:, 1:])  # masked candidates add zero to code 0
        return p.log()

    def sample(self, head: nn.Module, h: Tensor, cand: Tensor, valid: Tensor, temperature: float,
               generator: torch.Generator | None) -> Tensor:
        """h (B, D) -> tokens (B,) from the mixture at ``temperature``: at 1 the component from the gate, then the
        head's sample or the candidate (exact); otherwise the enumerated tempered mixture p(y)^(1/t) / Z."""
        if temperature != 1:
            probs = F.softmax(self.full_log_probs(head, h, cand, valid) / temperature, -1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        which = torch.multinomial(self.gate_log_probs(h, valid).exp(), 1, generator=generator)  # (B, 1)
        gen = head.sample(h, 1.0, generator)  # (B,)
        copy = cand.gather(-1, (which - 1).clamp_min(0)).squeeze(-1)
        return torch.where(which.squeeze(-1) == 0, gen, copy)
