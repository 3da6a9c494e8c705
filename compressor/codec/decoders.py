"""Decoders: quantized codes (B, N, D) -> frames (B, 3, H, W) in about [-1, 1].

The decoder is a transformer over the token grid, larger than the encoder by default: reconstruction from 224
bytes is mostly generation, and the strongest tokenizers spend their parameters there.

The conditional decoders (``ConditionalViTDecoder``, ``ConditionalViTOverlapDecoder``: one per pixel head) are the
per-frame ViT decoders that also read the previous frame's reconstruction and blend it in, pixel by pixel; the
conditional frames of ``compressor.codec.video`` use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from compressor.codec.convblocks import NORMS, conv_norm
from compressor.codec.layers import (captured_args, ResBlock, Transformer, init_weights, patchify, sincos_2d,
                                     unpatchify)


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
        return self.paint(self.transformer(x), grid)

    def paint(self, y: Tensor, grid: tuple[int, int]) -> Tensor:
        """The pixel head: features y (B, N, D) -> pixels (B, C, h*p, w*p), one patch per token."""
        return unpatchify(self.head(y), self.patch_size, grid)


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

    def paint(self, y: Tensor, grid: tuple[int, int]) -> Tensor:
        """The pixel head: features y (B, N, D) -> frames (B, 3, h*p, w*p), overlapping tiles blended."""
        return paint_tiles(self.head(y), self.window, grid)


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
        norm: None (no normalisation: the modules of checkpoints written before this argument) or a name of
            ``convblocks.conv_norm`` (``"group"``: GroupNorm, as taming and LDM normalise their up-stages), put in
            each up-stage before its nonlinearities (``_UpStage``).
    """

    def __init__(
        self,
        dim: int = 384,
        depth: int = 6,
        heads: int = 6,
        head_channels: list[int] = [192, 96, 48, 24],  # noqa: B006
        mlp_ratio: float = 4.0,
        norm: str | None = None,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        check_norm(norm)
        self.patch_size = 2 ** len(head_channels)
        self.dim = dim
        self.transformer = Transformer(dim, depth, heads, mlp_ratio)
        stages, c_in = [], dim
        for c in head_channels:
            stages.append(_UpStage(c_in, c, norm))
            c_in = c
        self.head = nn.Sequential(*stages, nn.Conv2d(c_in, 3, 3, padding=1))
        init_weights(self)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D), grid: (h, w) with h*w = N -> frames: (B, 3, h*p, w*p)."""
        x = x + sincos_2d(*grid, self.dim, x.device).to(x.dtype)
        x = rearrange(self.transformer(x), "b (h w) d -> b d h w", h=grid[0], w=grid[1])
        return self.head(x)


def check_norm(norm: str | None) -> None:
    """A decoder's ``norm`` argument: None or a name ``convblocks.conv_norm`` knows; ``ValueError`` otherwise, when
    the decoder is built (also from a checkpoint), whatever its stages."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} or None, got {norm!r}")


class _UpStage(nn.Module):
    """x2 upsampling: 1x1 conv + pixel shuffle (then a norm, if any), then GELU(x + refine(x)), where refine is a
    GELU and a 3x3 conv that starts at zero. (B, c_in, h, w) -> (B, c_out, 2h, 2w).

    The norm sits after the upsampling, before both nonlinearities, as a conv stem's sits after its conv: each stage
    then reads activations of a held scale, whatever the stages before it did. Without it (``norm=None``) nothing
    holds the scale, as in the conv stem whose tokens used 3% of the codebook (issue 35).
    """

    def __init__(self, c_in: int, c_out: int, norm: str | None = None):
        super().__init__()
        # With norm=None the modules are exactly those of checkpoints written before norms existed.
        norm_layer = [conv_norm(norm, c_out)] if norm is not None else []
        self.up = nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 1), nn.PixelShuffle(2), *norm_layer)
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
        norm: None (no normalisation: the modules of checkpoints written before this argument) or a name of
            ``convblocks.conv_norm`` (``"group"``: GroupNorm), put in each residual block and up-stage before its
            nonlinearity.
    """

    def __init__(
        self,
        dim: int = 512,
        depth: int = 2,
        head_channels: list[int] = [384, 192, 96, 48],  # noqa: B006
        norm: str | None = None,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        check_norm(norm)
        self.patch_size = 2 ** len(head_channels)
        self.dim = dim
        stages, c_in = [ResBlock(dim, conv_norm(norm, dim) if norm is not None else None) for _ in range(depth)], dim
        for c in head_channels:
            stages.append(_UpStage(c_in, c, norm))
            c_in = c
        self.net = nn.Sequential(*stages, nn.Conv2d(c_in, 3, 3, padding=1))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D), grid: (h, w) with h*w = N -> frames: (B, 3, h*p, w*p)."""
        return self.net(rearrange(x, "b (h w) d -> b d h w", h=grid[0], w=grid[1]))


class _ReadsReference:
    """What makes a per-frame ViT decoder conditional: it also reads the reference (the previous frame's
    reconstruction, which the decoder has) and, per pixel, blends the reference with what it paints, so a static part
    of the scene can keep the detail it already had. Mixed into a per-frame decoder class (``FRAME_DECODER``), whose
    transformer and pixel head it keeps, so that ``init_from`` can start it from a trained one of that class.

    The reference enters through ``ref_embed`` (its patches, added to the tokens' features) and leaves through
    ``blend`` (per pixel, the share of the reference to keep); both start at zero weights, the blend at 95% reference
    ("nothing changed"). With ``motion`` a ``flow`` head also reads a shift per grid cell and moves the reference by
    it (``warp``) before the blend, so a scene that moves can still be kept; it starts at no motion.
    """

    FRAME_DECODER: type

    def __init__(self, patch_size: int = 16, dim: int = 384, depth: int = 6, heads: int = 6, mlp_ratio: float = 4.0,
                 motion: bool = False):
        self.FRAME_DECODER.__init__(self, patch_size, dim, depth, heads, mlp_ratio)
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        p2 = self.patch_size ** 2
        self.ref_embed = nn.Linear(3 * p2, self.dim)
        self.blend = nn.Linear(self.dim, p2)  # per pixel: how much of the reference to keep instead
        self.motion = motion
        self.flow = nn.Linear(self.dim, 2) if motion else None  # per cell: (dx, dy) of the reference, in cells
        for layer in (self.ref_embed, self.blend, self.flow):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.constant_(self.blend.bias, 3.0)

    def forward(self, x: Tensor, ref: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, N, D) the tokens' features, ref: (B, 3, H, W) the reference, grid: (h, w) -> frames (B, 3, H, W):
        per pixel, a blend of the reference (moved, with ``motion``) and what the tokens say."""
        x = x + self.ref_embed(patchify(ref, self.patch_size)) + sincos_2d(*grid, self.dim, ref.device).to(x.dtype)
        y = self.transformer(x)
        if self.flow is not None:
            cells = rearrange(self.flow(y), "b (h w) c -> b c h w", h=grid[0])  # (B, 2, h, w)
            ref = warp(ref, cells.float() * self.patch_size)
        keep = torch.sigmoid(unpatchify(self.blend(y), self.patch_size, grid))  # (B, 1, H, W)
        return keep * ref + (1 - keep) * self.paint(y, grid)

    @torch.no_grad()
    def init_from(self, decoder: nn.Module) -> None:
        """Start from a trained per-frame decoder of ``FRAME_DECODER`` with the same arguments: its transformer and
        pixel head are copied, the reference's paths stay at zero and the blend starts at 5% reference, so this
        first decodes about as that decoder does. ``ValueError`` for a decoder of another class or size."""
        mine = {k: v for k, v in self.init_args.items() if k != "motion"}
        if type(decoder) is not self.FRAME_DECODER or decoder.init_args != mine:
            raise ValueError(f"{type(self).__name__}({mine}) starts from a {self.FRAME_DECODER.__name__} of the "
                             f"same arguments, not a {type(decoder).__name__}({decoder.init_args})")
        missing, unexpected = self.load_state_dict(decoder.state_dict(), strict=False)
        assert not unexpected and all(k.startswith(("ref_embed.", "blend.", "flow.")) for k in missing)
        self.blend.bias.fill_(-3.0)


class ConditionalViTDecoder(_ReadsReference, ViTDecoder):
    """``ViTDecoder`` (a linear head, a patch per token) that also reads and blends in the reference
    (``_ReadsReference``).

    Args:
        patch_size, dim, depth, heads, mlp_ratio: as ``ViTDecoder``'s.
        motion: a flow head moves the reference by a shift per grid cell before the blend.
    """

    FRAME_DECODER = ViTDecoder


class ConditionalViTOverlapDecoder(_ReadsReference, ViTOverlapDecoder):
    """``ViTOverlapDecoder`` (overlapping tiles blended with a tent window, no block grid) that also reads and blends
    in the reference (``_ReadsReference``).

    Args:
        patch_size, dim, depth, heads, mlp_ratio: as ``ViTOverlapDecoder``'s.
        motion: a flow head moves the reference by a shift per grid cell before the blend.
    """

    FRAME_DECODER = ViTOverlapDecoder


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """image (B, C, H, W), flow (B, 2, h, w) in pixels (dx, dy), on any grid that tiles the image -> the image
    sampled at (x + dx, y + dy), bilinearly; the flow is interpolated bilinearly to every pixel first, so cells move
    smoothly into each other, and samples past the edge repeat the border. In float32 whatever the autocast."""
    B, _, H, W = image.shape
    flow = F.interpolate(flow.float(), size=(H, W), mode="bilinear", align_corners=False)  # (B, 2, H, W)
    ys, xs = torch.meshgrid(torch.arange(H, device=image.device), torch.arange(W, device=image.device), indexing="ij")
    # grid_sample's coordinates with align_corners=False: -1 and 1 are the outer edges, pixel i's centre at
    # (2i + 1) / size - 1.
    gx = (2 * (xs + flow[:, 0]) + 1) / W - 1
    gy = (2 * (ys + flow[:, 1]) + 1) / H - 1
    return F.grid_sample(image.float(), torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=False)
