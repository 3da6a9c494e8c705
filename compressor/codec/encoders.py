"""Encoders: frames (B, 3, H, W) in [-1, 1] -> latents (B, N, D), one latent per cell of a patch grid.

At 128x256 with a 16-pixel grid both encoders give 8 x 16 = 128 tokens. The grid follows the input size, so
256x512 gives 512 tokens (4x the bytes); the fixed sincos position embedding makes that run without retraining.
Every encoder takes ``in_channels``: 6 reads a frame and the previous reconstruction stacked, as the conditional
frames of ``compressor.codec.video`` do.
"""

from __future__ import annotations


from einops import rearrange
from torch import Tensor, nn

from compressor.codec.convblocks import ConvMLPBlock, ConvNeXtBlock, ConvStem
from compressor.codec.layers import captured_args, ResBlock, Transformer, init_weights, patchify, sincos_2d


class ViTEncoder(nn.Module):
    """Pure Vision Transformer encoder: patchify, linear embedding, transformer. No convolution anywhere.

    Args:
        patch_size: side of the square patch; one token per patch.
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width over `dim`.
        in_channels: channels of the input: 3 (RGB) for a frame, 6 for a frame and its reference stacked (the
            conditional encoder of ``compressor.codec.video``).
    """

    def __init__(
        self,
        patch_size: int = 16,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.dim = dim
        self.embed = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio)
        init_weights(self)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, in_channels, H, W) -> latents: (B, H/p * W/p, D)."""
        H, W = frames.shape[-2:]
        x = self.embed(patchify(frames, self.patch_size))  # (B, N, D)
        x = x + sincos_2d(H // self.patch_size, W // self.patch_size, self.dim, frames.device).to(x.dtype)
        return self.transformer(x)


class ConvStemEncoder(nn.Module):
    """Convolutional stem down to a coarse grid, then transformer blocks (conv at low levels, attention high).

    Each stem stage halves the resolution with a strided 3x3 convolution and refines with a residual 3x3
    convolution, so ``len(stem_channels)`` stages give a ``2**len`` pixel grid (4 stages -> 16 px, 128 tokens).

    Args:
        stem_channels: output channels of each stride-2 stage.
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width over `dim`.
        in_channels: channels of the input: 3 (RGB) for a frame, 6 for a frame and its reference stacked (the
            conditional encoder of ``compressor.codec.video``).
    """

    def __init__(
        self,
        stem_channels: list[int] = [32, 64, 128, 256],  # noqa: B006
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.in_channels = in_channels
        self.patch_size = 2 ** len(stem_channels)
        self.dim = dim
        stages, c_in = [], in_channels
        for c in stem_channels:
            stages.append(_DownStage(c_in, c))
            c_in = c
        self.stem = nn.Sequential(*stages)
        self.embed = nn.Linear(c_in, dim)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio)
        init_weights(self)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, in_channels, H, W) -> latents: (B, H/p * W/p, D)."""
        x = self.stem(frames)  # (B, C, H/p, W/p)
        h, w = x.shape[-2:]
        x = self.embed(rearrange(x, "b c h w -> b (h w) c"))
        x = x + sincos_2d(h, w, self.dim, frames.device).to(x.dtype)
        return self.transformer(x)


class _DownStage(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.down = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.refine = nn.Sequential(nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.kaiming_normal_(self.down.weight, nonlinearity="linear")
        nn.init.zeros_(self.refine[1].weight)  # residual branch starts as identity
        nn.init.zeros_(self.refine[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return nn.functional.gelu(x + self.refine(x))


def grid_size(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    H, W = image_size
    if H % patch_size or W % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by the {patch_size}-pixel token grid")
    return H // patch_size, W // patch_size


class ConvEncoder(nn.Module):
    """Pure convolutional encoder (no attention): stride-2 stages down to the token grid, residual blocks there.

    The third corner of the ViT-versus-convolution comparison: the same grid and token budget as the other two
    encoders, with every layer a convolution.

    Args:
        channels: output channels of each stride-2 stage; ``2**len`` is the token grid's pixel size.
        depth: residual 3x3 blocks at the token grid (where the conv-stem encoder has its transformer).
        in_channels: channels of the input: 3 (RGB) for a frame, 6 for a frame and its reference stacked (the
            conditional encoder of ``compressor.codec.video``).
    """

    def __init__(
        self,
        channels: list[int] = [64, 128, 256, 384],  # noqa: B006
        depth: int = 2,
        in_channels: int = 3,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.in_channels = in_channels
        self.patch_size = 2 ** len(channels)
        self.dim = channels[-1]
        stages, c_in = [], in_channels
        for c in channels:
            stages.append(_DownStage(c_in, c))
            c_in = c
        self.net = nn.Sequential(*stages, *[ResBlock(c_in) for _ in range(depth)])

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, in_channels, H, W) -> latents: (B, H/p * W/p, C)."""
        return rearrange(self.net(frames), "b c h w -> b (h w) c")



class ConvStemViTEncoder(nn.Module):
    """Conv stem as Xiao et al. 2021 build it, then transformer blocks: convolution low, attention high.

    The stem (``convblocks.ConvStem``) has stride-2 3x3 conv + norm + ReLU stages and a 1x1 projection to ``dim``;
    ``len(stem_channels)`` stages give a ``2**len`` pixel grid (4 -> 16 px, 128 tokens at 128x256). Xiao et al. size
    the stem like one transformer block and drop a block, so FLOPs stay equal to the ViT's. Unlike the older
    ``ConvStemEncoder`` (no normalization, kept so that its checkpoints load), every stage is normalised.

    Args:
        stem_channels: output channels of each stride-2 stage.
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width over `dim`.
        norm: the stem's normalization, ``"group"``, ``"layer"`` (over channels) or ``"batch"``.
        in_channels: channels of the input: 3 (RGB) for a frame, 6 for a frame and its reference stacked (the
            conditional encoder of ``compressor.codec.video``).
    """

    def __init__(
        self,
        stem_channels: list[int] = [32, 64, 128, 256],  # noqa: B006
        dim: int = 256,
        depth: int = 3,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        norm: str = "group",
        in_channels: int = 3,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.in_channels = in_channels
        self.patch_size = 2 ** len(stem_channels)
        self.dim = dim
        self.stem = ConvStem(stem_channels, dim, norm, in_channels)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio)
        init_weights(self.transformer)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, in_channels, H, W) -> latents: (B, H/p * W/p, D)."""
        x = self.stem(frames)  # (B, D, H/p, W/p)
        h, w = x.shape[-2:]
        x = rearrange(x, "b d h w -> b (h w) d") + sincos_2d(h, w, self.dim, frames.device).to(x.dtype)
        return self.transformer(x)


class ConvNeXtEncoder(nn.Module):
    """All convolution (Xie's corner): the normalised conv stem, then ConvNeXt blocks at the token grid.

    The same stem as ``ConvStemViTEncoder`` with the transformer replaced by ConvNeXt blocks (7x7 depthwise,
    LayerNorm, inverted MLP, layer scale), so the two differ only in how the token grid mixes. No position embedding:
    the convolutions' padding tells positions apart.

    Args:
        stem_channels: output channels of each stride-2 stage; ``2**len`` is the token grid's pixel size.
        dim: width at the token grid.
        depth: ConvNeXt blocks at the token grid.
        mlp_ratio: inverted-MLP hidden width over `dim`.
        norm: the stem's normalization, ``"group"``, ``"layer"`` or ``"batch"``.
        in_channels: channels of the input: 3 (RGB) for a frame, 6 for a frame and its reference stacked (the
            conditional encoder of ``compressor.codec.video``).
    """

    def __init__(
        self,
        stem_channels: list[int] = [32, 64, 128, 256],  # noqa: B006
        dim: int = 256,
        depth: int = 5,
        mlp_ratio: float = 4.0,
        norm: str = "layer",
        in_channels: int = 3,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.in_channels = in_channels
        self.patch_size = 2 ** len(stem_channels)
        self.dim = dim
        self.stem = ConvStem(stem_channels, dim, norm, in_channels)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        init_weights(self.blocks)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, in_channels, H, W) -> latents: (B, H/p * W/p, D)."""
        x = self.blocks(self.stem(frames))  # (B, D, H/p, W/p)
        return self.norm(rearrange(x, "b d h w -> b (h w) d"))


class ConvViTEncoder(nn.Module):
    """ViTEncoder whose blocks also mix locally: a depthwise 3x3 conv on the token grid inside each MLP (the
    "convolutional ViT"). The patchify embedding, sincos positions, widths and depth are the ViT's; the depthwise
    convs add about 1% to its FLOPs.

    Args:
        patch_size: side of the square patch; one token per patch.
        dim: transformer width.
        depth: number of blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width over `dim`.
        in_channels: channels of the input: 3 (RGB) for a frame, 6 for a frame and its reference stacked (the
            conditional encoder of ``compressor.codec.video``).
    """

    def __init__(
        self,
        patch_size: int = 16,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.dim = dim
        self.embed = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.blocks = nn.ModuleList([ConvMLPBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        init_weights(self)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, in_channels, H, W) -> latents: (B, H/p * W/p, D)."""
        H, W = frames.shape[-2:]
        grid = (H // self.patch_size, W // self.patch_size)
        x = self.embed(patchify(frames, self.patch_size))  # (B, N, D)
        x = x + sincos_2d(*grid, self.dim, frames.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, grid)
        return self.norm(x)
