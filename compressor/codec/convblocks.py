"""Convolutional building blocks for the encoders of the ViT-versus-convolution comparison (issue 35), and the norm
of the decoders' conv stages (``conv_norm``).

- ``ConvStem``: Xiao et al. 2021 ("Early convolutions help transformers see better"): stride-2 3x3 conv + norm +
  ReLU stages, then a 1x1 conv to the transformer width. Normalised, unlike ``encoders._DownStage``, whose
  activations had nothing holding their scale (and whose tokens used 3% of the codebook).
- ``ConvNeXtBlock``: Liu et al. 2022: 7x7 depthwise conv, LayerNorm, inverted MLP (x4), layer scale.
- ``ConvMLPBlock``: a pre-norm transformer block whose MLP also mixes locally, a depthwise 3x3 conv on the token grid
  between its two linears (PVTv2's ConvFFN; the "convolutional ViT").
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from compressor.codec.layers import Attention

NORMS = ("group", "layer", "batch")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map: x (B, C, H, W) -> (B, C, H, W), as in ConvNeXt."""

    def forward(self, x: Tensor) -> Tensor:
        x = rearrange(x, "b c h w -> b h w c")
        return rearrange(super().forward(x), "b h w c -> b c h w")


def conv_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation of a conv stage: ``"group"`` (GroupNorm, up to 32 groups, as in taming / LDM),
    ``"layer"`` (LayerNorm over channels) or ``"batch"`` (BatchNorm2d, Xiao et al.'s choice).

    GroupNorm keeps at least 8 channels a group: with one channel a group (instance norm) each channel's mean over the
    frame is removed, and with it the frame's overall brightness and colour, which a codec must keep.
    """
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, max(1, channels // 8)), channels)
    if kind == "layer":
        return LayerNorm2d(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvStem(nn.Module):
    """Stride-2 3x3 conv + norm + ReLU per stage, then a 1x1 conv to ``dim``: (B, C, H, W) -> (B, dim, H/p, W/p)
    with ``p = 2 ** len(channels)``.

    Args:
        channels: output channels of each stride-2 stage.
        dim: output width (the 1x1 projection's).
        norm: ``"group"``, ``"layer"`` or ``"batch"`` (see ``conv_norm``).
        in_channels: channels of the input (3: RGB).
    """

    def __init__(self, channels: list[int], dim: int, norm: str = "group", in_channels: int = 3):
        super().__init__()
        stages, c_in = [], in_channels
        for c in channels:
            # BatchNorm removes a conv bias; GroupNorm and LayerNorm need one, or a frame and the same frame scaled
            # about mid-grey (black and dark grey) would normalise to the same features.
            stages += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=norm != "batch"), conv_norm(norm, c),
                       nn.ReLU()]
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(c_in, dim, 1)
        for m in self.stages:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        # Initialised like the ViT's patch embedding (a linear map, std 0.02), so that tokens and the sincos position
        # embedding start in the same ratio as in ViTEncoder.
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, in_channels, H, W) -> (B, dim, H/p, W/p)."""
        return self.proj(self.stages(frames))


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LN(dwconv7x7(x))) on a channels-first map (B, C, H, W), as in ConvNeXt.

    Args:
        dim: channels.
        mlp_ratio: hidden width of the inverted MLP over ``dim``.
        layer_scale: initial value of the per-channel residual scale (ConvNeXt's 1e-6: each block starts near the
            identity).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, layer_scale: float = 1e-6):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        y = rearrange(self.dwconv(x), "b c h w -> b h w c")  # channels-last for the norm and the linears
        y = self.mlp(self.norm(y)) * self.gamma
        return x + rearrange(y, "b h w c -> b c h w")


class ConvMLPBlock(nn.Module):
    """Pre-norm transformer block whose MLP mixes locally: fc1 -> depthwise 3x3 conv on the token grid -> GELU -> fc2.

    Args:
        dim: width.
        heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D) with N = grid[0] * grid[1], row-major -> (B, N, D)."""
        x = x + self.attn(self.norm1(x))
        y = rearrange(self.fc1(self.norm2(x)), "b (h w) c -> b c h w", h=grid[0], w=grid[1])
        y = rearrange(self.dwconv(y), "b c h w -> b (h w) c")  # (B, N, hidden)
        return x + self.fc2(nn.functional.gelu(y))
