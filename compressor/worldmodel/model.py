"""A causal GPT over frames of tokens (commaVQ-style): each frame's N tokens in raster order, given the frames before.

A window of T frames is flattened to T*N tokens, frame after frame, each frame row-major. Position i's output
predicts token i+1. Embeddings: the token, its frame index in the window and its position within the frame, plus
(``copy_hint``) the token that the *previous frame* holds at the position being predicted: 67-94% of dashcam tokens
repeat the previous frame's, and on a 40-minute CPU budget a model should not spend its steps learning to attend
exactly N positions back. The hint is causal (token i+1-N lies before i+1), so nothing is seen that the coder would
not have.

The heads (``full``, ``digits``, ``ar-digits``) turn states into log-probs, argmaxes and samples:
``compressor/worldmodel/heads.py``. With ``copy_pointer`` the distribution is a mixture of the head and the previous
frame's tokens around the predicted position (``compressor/worldmodel/pointer.py``); every log-prob, argmax and
sample goes through ``token_log_probs`` / ``token_argmax`` / ``token_sample``, which pick head or mixture.

Attention keeps a key/value cache for generation (``forward(..., cache=...)``), so sampling a frame costs one pass
over the context and then N one-token steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.codec.layers import Attention, matmul_attention
from compressor.worldmodel.heads import HEADS
from compressor.worldmodel.pointer import CopyPointer


@dataclass
class WorldModelConfig:
    codebook_size: int = 15360  # from the latents' metadata
    num_tokens: int = 128  # tokens per frame (the 8x16 grid, row-major)
    radices: list[int] = field(default_factory=lambda: [8, 8, 8, 6, 5])  # FSQ levels, least significant first
    context_frames: int = 4  # T: frames per window; the first is context only in training
    dim: int = 256
    depth: int = 4
    heads: int = 8
    dropout: float = 0.1  # 14k frames is little data for millions of parameters: it memorises without it
    head: str = "full"  # "full" softmax over the codebook, "digits" (independent FSQ digits) or "ar-digits"
    digit_hidden: int = 128  # the ar-digits head's hidden width
    copy_hint: bool = True  # add the previous frame's token at the predicted position to each input
    grid: list[int] = field(default_factory=lambda: [8, 16])  # (h, w) of a frame's tokens: the pointer's neighbours
    copy_pointer: bool = False  # mix the head with copies of the previous frame's 3x3 neighbourhood (pointer.py)

    @property
    def seq_len(self) -> int:
        return self.context_frames * self.num_tokens

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(Attention):
    """Multi-head causal self-attention with an optional key/value cache (a list holding (k, v) or nothing).

    A ``compressor.codec.layers.Attention`` (the same ``qkv``/``proj`` weights), so ``set_attention_kernel`` picks
    how a whole window is attended: ``"sdpa"`` (PyTorch's fused kernel, with attention dropout) or ``"matmul"``
    (two batched matmuls and a float32 softmax: no dropout on the attention weights, but on this AMX CPU in bf16
    much faster, reports/world-model/bench-step.md). Cached steps (generation) always use SDPA.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__(dim, heads)
        self.dropout = dropout

    def forward(self, x: Tensor, cache: list | None = None) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, hs)
        if cache is not None:
            if cache:  # new queries attend to everything cached plus themselves
                k, v = torch.cat([cache[0][0], k], 2), torch.cat([cache[0][1], v], 2)
                cache[0] = (k, v)
            else:
                cache.append((k, v))
        past = k.shape[2] - L
        if past == 0 and self.kernel == "matmul":
            y = matmul_attention(q, k, v, causal=True)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0)
        elif L == 1:  # one new query sees every key
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # query j (absolute past + j) sees keys <= past + j
            mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # (B, h, L, hs) -> (B, L, D)


class Block(nn.Module):
    """Pre-norm transformer block with dropout after attention and MLP."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: list | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cache))
        return x + self.mlp(self.norm2(x))


class WorldModel(nn.Module):
    """The token GPT. ``forward(tokens)`` takes a flattened window (B, L) and returns the transformer state
    (B, L, D) whose position i predicts token i+1; the head turns states into log-probs, argmaxes or samples.

    Args:
        config: sizes, head and hint (``WorldModelConfig``).
    """

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        c = self.config = config
        if c.head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {c.head!r}")
        self.tok = nn.Embedding(c.codebook_size, c.dim)
        self.hint = nn.Embedding(c.codebook_size + 1, c.dim) if c.copy_hint else None  # last code: "no frame before"
        self.frame_pos = nn.Embedding(c.context_frames, c.dim)
        self.token_pos = nn.Embedding(c.num_tokens, c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([Block(c.dim, c.heads, c.dropout) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.dim)
        extra = {"hidden": c.digit_hidden} if c.head == "ar-digits" else {}
        self.head = HEADS[c.head](c.dim, c.codebook_size, c.radices, **extra)
        self.pointer = None
        if c.copy_pointer:
            if len(c.grid) != 2 or c.grid[0] * c.grid[1] != c.num_tokens:
                raise ValueError(f"copy_pointer needs a grid of num_tokens={c.num_tokens} tokens, got {c.grid}")
            self.pointer = CopyPointer(c.dim, c.grid)
        self.apply(self._init)
        if self.pointer is not None:
            self.pointer.reset_gate()  # after _init, which zeroes every bias

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def embed(self, tokens: Tensor, start: int = 0, context: Tensor | None = None) -> Tensor:
        """tokens (B, L) at absolute positions start..start+L-1 of a window -> (B, L, D).

        ``context`` (B, start + L): the window's tokens so far (tokens included), for the copy hint."""
        B, L = tokens.shape
        N = self.config.num_tokens
        pos = torch.arange(start, start + L, device=tokens.device)  # (L,)
        x = self.tok(tokens) + self.frame_pos(pos // N) + self.token_pos(pos % N)
        if self.hint is not None:
            whole = tokens if context is None else context  # (B, start + L)
            target = pos + 1 - N  # the previous frame's token at the position that position i predicts
            hint = whole[:, target.clamp_min(0)]
            hint = torch.where(target >= 0, hint, self.config.codebook_size)
            x = x + self.hint(hint)
        return self.drop(x)

    def forward(self, tokens: Tensor, start: int = 0, context: Tensor | None = None,
                cache: list[list] | None = None) -> Tensor:
        """tokens (B, L) -> states (B, L, D); with ``cache`` (one list per block), positions continue after it."""
        x = self.embed(tokens, start, context)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.norm(x)

    def copy_candidates(self, seq: Tensor, pos: Tensor) -> tuple[Tensor, Tensor] | None:
        """seq (B, L) tokens, pos (M,) indices of predicted tokens -> the pointer's candidates (B, M, K) and valid
        (M, K), or None without a pointer."""
        return None if self.pointer is None else self.pointer.candidates(seq, pos)

    def scored_states(self, flat: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """flat (B, L) a window -> the states predicting tokens N..L-1 (B, L-N, D) and their copy candidates."""
        N = self.config.num_tokens
        h = self(flat[:, :-1])[:, N - 1 :]  # position i predicts token i+1
        return h, self.copy_candidates(flat, torch.arange(N, flat.shape[1], device=flat.device))

    def token_log_probs(self, h: Tensor, tokens: Tensor, cands: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """h (..., D), tokens (...) -> log p (nats) (...): the head's, or the mixture's with ``cands``."""
        return self.head.log_probs(h, tokens) if cands is None else self.pointer.log_probs(self.head, h, *cands, tokens)

    def token_argmax(self, h: Tensor, cands: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return self.head.argmax(h) if cands is None else self.pointer.argmax(self.head, h, *cands)

    def token_sample(self, h: Tensor, temperature: float, generator: torch.Generator | None,
                     cands: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if cands is None:
            return self.head.sample(h, temperature, generator)
        return self.pointer.sample(self.head, h, *cands, temperature, generator)

    def window_log_probs(self, window: Tensor) -> Tensor:
        """window (B, T, N) -> log p (nats) of every token of frames 2..T given all before it: (B, T-1, N)."""
        B, T, N = window.shape
        flat = window.reshape(B, T * N)
        h, cands = self.scored_states(flat)  # (B, (T-1)*N, D)
        return self.token_log_probs(h, flat[:, N:], cands).view(B, T - 1, N)

    def window_argmax(self, window: Tensor) -> Tensor:
        """window (B, T, N) -> teacher-forced argmax of every token of frames 2..T: (B, T-1, N)."""
        B, T, N = window.shape
        flat = window.reshape(B, T * N)
        return self.token_argmax(*self.scored_states(flat)).view(B, T - 1, N)

    @torch.no_grad()
    def next_frame(self, past: Tensor, temperature: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """past (B, P, N) real or generated frames, 1 <= P < T -> the next frame (B, N): greedy (temperature 0)
        or sampled, token by token in raster order with its own tokens fed back."""
        B, P, N = past.shape
        if not 1 <= P < self.config.context_frames:
            raise ValueError(f"next_frame takes 1..{self.config.context_frames - 1} past frames, got {P}")
        cache: list[list] = [[] for _ in self.blocks]
        seq = past.reshape(B, P * N)
        h = self(seq, cache=cache)[:, -1]  # (B, D): predicts the new frame's token 0
        out = []
        for n in range(N):
            cands = self.copy_candidates(seq, torch.tensor([P * N + n], device=seq.device))  # new token n's
            if cands is not None:
                cands = (cands[0][:, 0], cands[1][0])  # (B, K), (K,)
            token = (self.token_argmax(h, cands) if temperature <= 0
                     else self.token_sample(h, temperature, generator, cands))  # (B,)
            out.append(token)
            if n == N - 1:
                break
            seq = torch.cat([seq, token[:, None]], 1)
            h = self(token[:, None], start=seq.shape[1] - 1, context=seq, cache=cache)[:, -1]
        return torch.stack(out, 1)

    @torch.no_grad()
    def rollout(self, past: Tensor, frames: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        """past (B, P, N) -> ``frames`` new frames (B, frames, N), each predicted from the last T-1 frames, real
        or its own."""
        seq = past
        for _ in range(frames):
            nxt = self.next_frame(seq[:, -(self.config.context_frames - 1):], temperature, generator)
            seq = torch.cat([seq, nxt[:, None]], 1)
        return seq[:, past.shape[1]:]
