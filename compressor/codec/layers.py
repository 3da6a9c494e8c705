"""Transformer building blocks shared by the encoders and decoders."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def sincos_2d(grid_h: int, grid_w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid_h * grid_w, dim), row-major.

    Fixed rather than learned so that a model trained on one patch grid still runs on another (e.g. 256x512).
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for a 2-D sincos embedding, got {dim}")
    y, x = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float32, device=device),
        torch.arange(grid_w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    y = y.flatten()[:, None] * omega[None]
    x = x.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


ATTENTION_KERNELS = ("sdpa", "matmul")


class Attention(nn.Module):
    """Multi-head self-attention. x: (B, N, D) -> (B, N, D).

    ``kernel`` picks how the attention itself is computed (same function, different speed; see
    ``set_attention_kernel``): ``"sdpa"``, PyTorch's fused kernel (flash attention where available), or
    ``"matmul"``, two batched matmuls and a float32 softmax. On CPUs with AMX, SDPA's bf16 backward is slower
    than its float32 one, while bf16 matmuls run on AMX tiles: at the recipe's shapes the matmul form's forward and
    backward are 3x faster than SDPA's in bf16, and the recipe trains 1.2x faster (docs/speed.md).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.kernel = "sdpa"

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if self.kernel == "matmul":
            x = matmul_attention(q, k, v, causal)
        else:
            x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # flash / memory-efficient where available
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(d)) v with the softmax in float32. q, k, v: (B, h, N, d) -> (B, h, N, d)."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, h, N, N)
    if causal:
        n = scores.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


def set_attention_kernel(model: nn.Module, kernel: str) -> int:
    """Compute every ``Attention`` of ``model`` with ``kernel`` (one of ``ATTENTION_KERNELS``); returns how many.

    A speed choice, not part of the model: checkpoints do not record it, and the outputs agree within the
    precision's tolerance (a test). ``training.perf.fastest_cpu_path`` picks it by measurement.
    """
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {ATTENTION_KERNELS}, not {kernel!r}")
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for m in layers:
        m.kernel = kernel
    return len(layers)


class Block(nn.Module):
    """Pre-norm transformer block (attention + MLP), as in ViT."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        x = x + self.attn(self.norm1(x), causal)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of blocks with a final norm. x: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.grad_checkpointing = False  # see set_grad_checkpointing

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Recompute every transformer block's activations in the backward pass instead of storing them.

    Memory for activations drops to one block's worth per stack, for about one extra forward pass of compute.
    Returns the number of transformer stacks switched.
    """
    stacks = [m for m in model.modules() if isinstance(m, Transformer)]
    for m in stacks:
        m.grad_checkpointing = enabled
    return len(stacks)


def init_weights(module: nn.Module) -> None:
    """ViT-style init: truncated-normal linears, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def patchify(frames: Tensor, patch_size: int) -> Tensor:
    """frames: (B, C, H, W) -> patches: (B, N, p*p*C), row-major over the (H/p, W/p) grid."""
    return rearrange(frames, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int]) -> Tensor:
    """patches: (B, N, p*p*C) -> frames: (B, C, H, W)."""
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid[0], w=grid[1], p=patch_size, q=patch_size)


def captured_args(local_vars: dict) -> dict:
    """The constructor arguments from ``locals()`` taken first thing in ``__init__``."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


class ResBlock(nn.Module):
    """x + conv3x3(gelu(norm(conv3x3(x)))), starting as the identity.

    Args:
        channels: channels in and out.
        norm: a normalisation of ``channels`` before the nonlinearity (e.g. ``convblocks.conv_norm``'s), or None for
            none: then the modules (and a checkpoint's weight names) are those of the block before norms existed.
    """

    def __init__(self, channels: int, norm: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), *([norm] if norm is not None else []),
                                  nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)
