"""Image quality metrics, one value per frame: PSNR, MS-SSIM and optional LPIPS, plus the frozen VGG16 features
that LPIPS and the perceptual loss share.

Every method in an evaluation (our codec and each baseline) is scored by these same functions on the same
preprocessed frames, and training logs the same PSNR and MS-SSIM. Imports nothing else from the package.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from collections.abc import Callable, Iterator

from torch import Tensor, nn

from compressor.utils import to_unit

# A 7-pixel window keeps all five MS-SSIM scales valid at 128 px height (the standard 11 needs > 160 px).
MS_SSIM_WINDOW = 7
MS_SSIM_SIGMA = 1.5
MS_SSIM_SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as pytorch-msssim
MS_SSIM_K = (0.01, 0.03)
VGG_TAPS = (3, 8, 15, 22, 29)  # VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the taps LPIPS uses


def psnr(recon: Tensor, target: Tensor, peak: float) -> Tensor:
    """PSNR in dB per image, (B,), for images whose value range spans ``peak`` (255 for uint8, 2 for [-1, 1])."""
    mse = ((recon.float() - target.float()) / peak).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def model_psnr(recon: Tensor, x: Tensor) -> Tensor:
    """PSNR in dB per image, (B,), for model-space frames in [-1, 1] (the reconstruction clamped): what training
    logs, equal to ``frame_psnr`` on the same frames up to the 8-bit rounding."""
    return psnr(recon.float().clamp(-1, 1), x, peak=2.0)


def frame_psnr(recon: Tensor, frames: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) pair -> PSNR in dB per frame, (B,), on the 8-bit scale."""
    return psnr(recon, frames, 255.0)


def _gaussian_taps(size: int = MS_SSIM_WINDOW, sigma: float = MS_SSIM_SIGMA) -> list[float]:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).tolist()


_TAPS = _gaussian_taps()


def _blur(x: Tensor) -> Tensor:
    """Separable Gaussian blur with no padding ("valid"), as pytorch-msssim's: (..., H, W) -> (..., H-6, W-6).

    Written as a sum of shifted slices rather than a depthwise convolution: oneDNN's depthwise 1x7 convolutions
    (and their backward) cost 80% of pytorch-msssim's time on these CPUs, while this form is plain elementwise work
    that ``torch.compile`` fuses into one pass per direction (``ReconstructionLoss(compile=True)``).
    """
    k = len(_TAPS)
    w = x.shape[-1] - k + 1
    x = sum(t * x[..., i:i + w] for i, t in enumerate(_TAPS))
    h = x.shape[-2] - k + 1
    return sum(t * x[..., i:i + h, :] for i, t in enumerate(_TAPS))


def ms_ssim_unit(x: Tensor, y: Tensor) -> Tensor:
    """MS-SSIM per image, (B,), of frames in [0, 1], (B, C, H, W), with the 7-pixel window; float32 inputs.

    The same quantity as ``pytorch_msssim.ms_ssim(x, y, data_range=1, size_average=False, win_size=7)`` (a test
    holds them within 1e-5 on real frames), computed with the five moment maps (x, y, x², y², xy) of each scale
    blurred in one call instead of five.
    """
    c1, c2 = MS_SSIM_K[0] ** 2, MS_SSIM_K[1] ** 2
    if min(x.shape[-2:]) <= (MS_SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_SCALE_WEIGHTS) - 1):
        raise ValueError(f"MS-SSIM needs frames larger than 96 px on each side, got {tuple(x.shape[-2:])}")
    C = x.shape[1]
    per_scale = []
    for scale in range(len(MS_SSIM_SCALE_WEIGHTS)):
        moments = _blur(torch.cat([x, y, x * x, y * y, x * y], 1))  # (B, 5C, H-6, W-6)
        mu_x, mu_y, xx, yy, xy = moments.split(C, 1)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        cs_map = (2 * (xy - mu_xy) + c2) / ((xx - mu_xx) + (yy - mu_yy) + c2)  # contrast-structure
        if scale < len(MS_SSIM_SCALE_WEIGHTS) - 1:
            per_scale.append(torch.relu(cs_map.flatten(2).mean(-1)))  # (B, C)
            padding = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=padding), F.avg_pool2d(y, 2, padding=padding)
        else:
            ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
            per_scale.append(torch.relu(ssim_map.flatten(2).mean(-1)))
    weights = x.new_tensor(MS_SSIM_SCALE_WEIGHTS).view(-1, 1, 1)
    return torch.prod(torch.stack(per_scale) ** weights, 0).mean(1)  # (scales, B, C) -> (B,)


def ms_ssim_01(recon: Tensor, target: Tensor, fn: Callable[[Tensor, Tensor], Tensor] = ms_ssim_unit) -> Tensor:
    """MS-SSIM per image, (B,), for frames in [-1, 1]; computed in float32 (``fn``: a compiled ``ms_ssim_unit``)."""
    # Under bf16 autocast the Gaussian-filtered variances go negative and MS-SSIM returns NaN.
    with torch.autocast(recon.device.type, enabled=False):
        return fn((recon.float().clamp(-1, 1) + 1) / 2, (target.float() + 1) / 2)


def frame_ms_ssim(recon: Tensor, frames: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) pair -> MS-SSIM per frame, (B,) (7-pixel window, so all 5 scales fit at 128 px)."""
    return ms_ssim_01(to_unit(recon), to_unit(frames))


def vgg16_features(weights_path: str, last_layer: int = VGG_TAPS[-1]) -> nn.Sequential:
    """Frozen torchvision VGG16 ``features[: last_layer + 1]`` from a local state dict; nothing is downloaded.

    Accepts a whole torchvision ``vgg16`` state dict or just its ``features`` part; the classifier is unused.
    """
    import torchvision

    if not os.path.exists(weights_path):
        raise FileNotFoundError(f"VGG16 weights not found: {weights_path} (no download is attempted)")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    state = {k: v for k, v in state.items() if int(k.split(".")[0]) <= last_layer}
    features = torchvision.models.vgg16(weights=None).features[: last_layer + 1]
    features.load_state_dict(state)
    return features.eval().requires_grad_(False)


def vgg_feature_pairs(features: nn.Sequential, x: Tensor, eps: float = 1e-12) -> Iterator[tuple[Tensor, Tensor]]:
    """x: (2B, 3, H, W), a batch of reconstructions followed by their targets -> at each of ``VGG_TAPS``, the two
    halves' channel-normalised feature maps, each (B, C_k, h_k, w_k)."""
    for i, layer in enumerate(features):
        x = layer(x)
        if i in VGG_TAPS:
            yield F.normalize(x, dim=1, eps=eps).chunk(2)


class LPIPS(nn.Module):
    """LPIPS (VGG variant, Zhang et al. 2018) from local weights only.

    Args:
        lin_path: the LPIPS linear-layer weights, as shipped in the ``lpips`` package (``weights/v0.1/vgg.pth``:
            keys ``lin{k}.model.1.weight`` of shape (1, C_k, 1, 1)).
        vgg_path: a torchvision VGG16 state dict (ImageNet weights), whole model or ``features``.
    """

    _CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, lin_path: str, vgg_path: str):
        super().__init__()
        if not os.path.exists(lin_path):
            raise FileNotFoundError(f"LPIPS weights not found: {lin_path} (no download is attempted)")
        self.features = vgg16_features(vgg_path)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        self.lins = nn.ParameterList(
            [nn.Parameter(lin[f"lin{k}.model.1.weight"].reshape(1, c, 1, 1), requires_grad=False)
             for k, c in enumerate(self._CHANNELS)])
        # LPIPS's input scaling layer (frames in [-1, 1]).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, recon: Tensor, frames: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) pair -> LPIPS distance per frame, (B,); 0 for identical frames."""
        x = (to_unit(torch.cat([recon, frames])) - self.shift) / self.scale
        dist = x.new_zeros(len(recon))
        for (a, b), lin in zip(vgg_feature_pairs(self.features, x, eps=1e-10), self.lins):
            dist += ((a - b).pow(2) * lin).sum(1).mean((1, 2))
        return dist
