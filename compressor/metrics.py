"""Image quality metrics on uint8 frames (B, 3, H, W), one value per frame: PSNR, MS-SSIM and optional LPIPS.

Every method in an evaluation (our codec and each baseline) is scored by these same functions on the same
preprocessed frames.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.losses import ms_ssim_01, vgg16_features


def frame_psnr(recon: Tensor, frames: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) pair -> PSNR in dB per frame, (B,), on the 8-bit scale."""
    mse = (recon.float() - frames.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def frame_ms_ssim(recon: Tensor, frames: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) pair -> MS-SSIM per frame, (B,) (7-pixel window, so all 5 scales fit at 128 px)."""
    return ms_ssim_01(recon.float() / 127.5 - 1, frames.float() / 127.5 - 1)


class LPIPS(nn.Module):
    """LPIPS (VGG variant, Zhang et al. 2018) from local weights only.

    Args:
        lin_path: the LPIPS linear-layer weights, as shipped in the ``lpips`` package (``weights/v0.1/vgg.pth``:
            keys ``lin{k}.model.1.weight`` of shape (1, C_k, 1, 1)).
        vgg_path: a torchvision VGG16 state dict (ImageNet weights), whole model or ``features``.
    """

    _LAYERS = (3, 8, 15, 22, 29)  # relu1_2 ... relu5_3, the taps LPIPS uses
    _CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, lin_path: str, vgg_path: str):
        super().__init__()
        if not os.path.exists(lin_path):
            raise FileNotFoundError(f"LPIPS weights not found: {lin_path} (no download is attempted)")
        self.features = vgg16_features(vgg_path, self._LAYERS[-1])
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
        x = (torch.cat([recon, frames]).float() / 127.5 - 1 - self.shift) / self.scale
        dist, k = x.new_zeros(len(recon)), 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._LAYERS:
                a, b = F.normalize(x, dim=1, eps=1e-10).chunk(2)
                dist += ((a - b).pow(2) * self.lins[k]).sum(1).mean((1, 2))
                k += 1
        return dist
