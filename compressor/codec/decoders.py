"""Decoders: quantized codes (B, N, D) -> frames (B, 3, H, W) in about [-1, 1].

The decoder is a transformer over the token grid, larger than the encoder by default: reconstruction from 224
bytes is mostly generation, and the strongest tokenizers spend their parameters there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from compressor.codec.layers import captured_args, ResBlock, Transformer, init_weights, sincos_2d, unpatchify


class ViTDecoder(nn.Module):
    """Transformer over the token grid plus a linear pixel head that unpatchifies (no convolution).

    Args:
        patch_size: pixels per token side; must match the encoder.
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width over `dim`.
    """

    def __init__(
        self,
        patch_size: int = 16,
        dim: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.patch_size = patch_size
        self.dim = dim
        self.transformer = Transformer(dim, depth, heads, mlp_ratio)
        self.head = nn.Linear(dim, 3 * patch_size * patch_size)
        init_weights(self)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D), grid: (h, w) with h*w = N -> frames: (B, 3, h*p, w*p)."""
        x = x + sincos_2d(*grid, self.dim, x.device).to(x.dtype)
        return unpatchify(self.head(self.transformer(x)), self.patch_size, grid)


class ViTRefineDecoder(ViTDecoder):
    """``ViTDecoder`` plus a small full-resolution convolution that works across patch borders.

    The linear head emits ``3 + features`` channels per pixel instead of 3. After unpatchifying, two 3x3
    convolutions over all of them predict a correction that is added to the RGB channels. A linear head
    predicts each 16-px patch on its own, which leaves visible patch edges at this bitrate; the correction is
    cheap (about 0.2 GMAC per 128x256 frame against 1.4 for the transformer) and starts at zero, so training
    starts from the plain linear head.

    Args:
        patch_size: pixels per token side; must match the encoder.
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        features: extra per-pixel channels the head emits for the refinement.
        hidden: channels of the refinement's hidden layer.
        mlp_ratio: MLP hidden width over `dim`.
    """

    def __init__(
        self,
        patch_size: int = 16,
        dim: int = 384,
        depth: int = 6,
        heads: int = 6,
        features: int = 13,
        hidden: int = 32,
        mlp_ratio: float = 4.0,
    ):
        super().__init__(patch_size, dim, depth, heads, mlp_ratio)
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.head = nn.Linear(dim, (3 + features) * patch_size * patch_size)  # RGB plus features per pixel
        self.refine = nn.Sequential(nn.Conv2d(3 + features, hidden, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(hidden, 3, 3, padding=1))
        init_weights(self.head)
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D), grid: (h, w) with h*w = N -> frames: (B, 3, h*p, w*p)."""
        pixels = super().forward(x, grid)  # (B, 3 + features, H, W): unpatchify keeps every channel
        return pixels[:, :3] + self.refine(pixels)


class ViTOverlapDecoder(ViTDecoder):
    """``ViTDecoder`` whose tokens each paint a tile twice the patch side, blended with a tent window.

    Tile ``k`` covers its own patch plus half a patch on every side; a separable triangular window fades it out
    towards its edges. Neighbouring windows sum to one, so every pixel is a weighted mean of the 2x2 tiles over it
    and the output is continuous across patch borders: no block grid, whatever the tokens say. At the frame's
    border, where fewer tiles overlap, the weights are renormalised. The head is 4x the linear head's width (about
    +3% of the training FLOPs of the recipe); there is no convolution.

    Args:
        patch_size: pixels per token side; must match the encoder.
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width over `dim`.
    """

    def __init__(self, patch_size: int = 16, dim: int = 384, depth: int = 6, heads: int = 6, mlp_ratio: float = 4.0):
        super().__init__(patch_size, dim, depth, heads, mlp_ratio)
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.head = nn.Linear(dim, 3 * (2 * patch_size) ** 2)
        init_weights(self.head)
        self.register_buffer("window", tent_window(patch_size), persistent=False)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D), grid: (h, w) with h*w = N -> frames: (B, 3, h*p, w*p)."""
        x = x + sincos_2d(*grid, self.dim, x.device).to(x.dtype)
        return paint_tiles(self.head(self.transformer(x)), self.window, grid)


def tent_window(patch_size: int) -> Tensor:
    """(2p, 2p) separable triangular window: neighbouring tiles' windows, a patch apart, sum to one."""
    tile = 2 * patch_size
    ramp = 1 - (torch.arange(tile) + 0.5 - patch_size).abs() / patch_size
    return torch.outer(ramp, ramp)


def paint_tiles(tiles: Tensor, window: Tensor, grid: tuple[int, int]) -> Tensor:
    """tiles: (B, N, 3 (2p)^2), one per grid cell, each over its patch plus half a patch around; window: (2p, 2p)
    -> frames (B, 3, h p, w p), every pixel the window-weighted mean of the tiles over it (renormalised at the
    frame's border, where fewer overlap)."""
    (h, w), p = grid, window.shape[0] // 2
    tiles = rearrange(tiles, "b n (c t) -> b c t n", c=3)  # (B, 3, (2p)^2, N)
    window = window.flatten().to(tiles.dtype)
    fold = dict(output_size=(h * p, w * p), kernel_size=2 * p, stride=p, padding=p // 2)
    out = F.fold(rearrange(tiles * window[:, None], "b c t n -> b (c t) n"), **fold)  # (B, 3, H, W)
    weight = F.fold(window[None, :, None].expand(1, -1, h * w), **fold)  # (1, 1, H, W): 1 inside, less at borders
    return out / weight


class ConvUpsampleDecoder(nn.Module):
    """Transformer over the token grid, then a convolutional upsampling head (the mirror of a conv stem).

    Each head stage doubles the resolution with a 1x1 convolution + pixel shuffle and refines with a residual
    3x3 convolution, so local texture across patch borders is cheap to produce.

    Args:
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        head_channels: channels after each x2 upsampling stage; ``2**len`` must equal the encoder's patch size.
        mlp_ratio: MLP hidden width over `dim`.
    """

    def __init__(
        self,
        dim: int = 384,
        depth: int = 6,
        heads: int = 6,
        head_channels: list[int] = [192, 96, 48, 24],  # noqa: B006
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.patch_size = 2 ** len(head_channels)
        self.dim = dim
        self.transformer = Transformer(dim, depth, heads, mlp_ratio)
        stages, c_in = [], dim
        for c in head_channels:
            stages.append(_UpStage(c_in, c))
            c_in = c
        self.head = nn.Sequential(*stages, nn.Conv2d(c_in, 3, 3, padding=1))
        init_weights(self)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D), grid: (h, w) with h*w = N -> frames: (B, 3, h*p, w*p)."""
        x = x + sincos_2d(*grid, self.dim, x.device).to(x.dtype)
        x = rearrange(self.transformer(x), "b (h w) d -> b d h w", h=grid[0], w=grid[1])
        return self.head(x)


class _UpStage(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 1), nn.PixelShuffle(2))
        self.refine = nn.Sequential(nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.refine[1].weight)  # residual branch starts as identity
        nn.init.zeros_(self.refine[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(x)
        return nn.functional.gelu(x + self.refine(x))


class ConvDecoder(nn.Module):
    """Pure convolutional decoder (no attention): residual blocks at the token grid, then x2 upsampling stages.

    Args:
        dim: channels at the token grid.
        depth: residual 3x3 blocks at the token grid (where the other decoders have their transformer).
        head_channels: channels after each x2 upsampling stage; ``2**len`` must equal the encoder's grid size.
    """

    def __init__(
        self,
        dim: int = 512,
        depth: int = 2,
        head_channels: list[int] = [384, 192, 96, 48],  # noqa: B006
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.patch_size = 2 ** len(head_channels)
        self.dim = dim
        stages, c_in = [ResBlock(dim) for _ in range(depth)], dim
        for c in head_channels:
            stages.append(_UpStage(c_in, c))
            c_in = c
        self.net = nn.Sequential(*stages, nn.Conv2d(c_in, 3, 3, padding=1))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D), grid: (h, w) with h*w = N -> frames: (B, 3, h*p, w*p)."""
        return self.net(rearrange(x, "b (h w) d -> b d h w", h=grid[0], w=grid[1]))
