"""The training objective: pixel + MS-SSIM reconstruction, an optional perceptual term and an optional patch
discriminator, composed in ``CompressionLoss`` (chosen in YAML as ``model.loss``).

All take frames in [-1, 1], (B, 3, H, W).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.metrics import ms_ssim_01, ms_ssim_unit, vgg16_features, vgg_feature_pairs
from compressor.training.speed import EagerFallback


@functools.cache
def compiled_ms_ssim() -> EagerFallback:
    """One compiled ``ms_ssim_unit`` per process (shared by every loss, never pickled with one)."""
    return EagerFallback(ms_ssim_unit, dynamic=False)


class ReconstructionLoss(nn.Module):
    """Weighted L1 + L2 + (1 - MS-SSIM). Returns the named terms and their weighted sum under ``"loss"``.

    Args:
        l1_weight: weight of the mean absolute error.
        mse_weight: weight of the mean squared error (what PSNR measures).
        ms_ssim_weight: weight of 1 - MS-SSIM (structure at several scales).
        compile: run MS-SSIM through ``torch.compile`` when gradients are on (training steps; evaluation stays
            eager, so batches of other sizes cost no recompiles). Same values; on a 2-core Xeon its forward and
            backward took 37 ms a batch of 16 against 178 eager and 236 for pytorch-msssim (docs/speed.md), after a
            one-off compile of about 70 s (6 s once inductor's on-disk cache holds it). Eager if compiling fails.
    """

    def __init__(self, l1_weight: float = 1.0, mse_weight: float = 1.0, ms_ssim_weight: float = 0.2,
                 compile: bool = False):
        super().__init__()
        self.l1_weight, self.mse_weight, self.ms_ssim_weight = l1_weight, mse_weight, ms_ssim_weight
        self.compile = compile

    def forward(self, recon: Tensor, target: Tensor) -> dict[str, Tensor]:
        recon, target = recon.float(), target.float()
        terms = {"l1": F.l1_loss(recon, target), "mse": F.mse_loss(recon, target)}
        if self.ms_ssim_weight:
            fn = compiled_ms_ssim() if self.compile and torch.is_grad_enabled() else ms_ssim_unit
            terms["ms_ssim"] = 1 - ms_ssim_01(recon, target, fn).mean()
        terms["loss"] = (
            self.l1_weight * terms["l1"] + self.mse_weight * terms["mse"]
            + self.ms_ssim_weight * terms.get("ms_ssim", 0.0)
        )
        return terms


class PerceptualLoss(nn.Module):
    """Distance between VGG16 feature maps (LPIPS without its learned linear layers).

    Weights are read from a local torchvision ``vgg16`` state dict: nothing is downloaded.

    Args:
        weights_path: path to a ``torch.save``-d torchvision VGG16 state dict (whole model or ``features``).
    """

    def __init__(self, weights_path: str):
        super().__init__()
        self.features = vgg16_features(weights_path)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: never switch to training behaviour
        return self

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        x = torch.cat([recon, target]).float()
        x = ((x + 1) / 2 - self.mean) / self.std
        loss = x.new_zeros(())
        for a, b in vgg_feature_pairs(self.features, x):
            loss = loss + (a - b).pow(2).sum(1).mean()
        return loss


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator (pix2pix): one real/fake logit per overlapping patch.

    Args:
        channels: width of the first layer; doubles per downsampling layer.
        num_layers: stride-2 layers.
    """

    def __init__(self, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(1, num_layers):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, 3, H, W) -> logits (B, 1, h, w)."""
        return self.net(frames)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


class CompressionLoss(nn.Module):
    """Everything the autoencoder is trained against, composed in one place so the LightningModule stays generic.

    ``forward`` returns the named terms and their weighted sum under ``"loss"``. The adversarial term joins from
    ``gan_start_step`` on (a discriminator trained against a blurry early model only teaches it noise); the
    discriminator's own loss is ``discriminator_loss``, and its parameters are this module's ``discriminator``.

    Args:
        l1_weight, mse_weight, ms_ssim_weight: reconstruction weights (``ReconstructionLoss``).
        quant_weight: weight of the quantizer's own loss (VQ commitment; 0 for FSQ).
        perceptual_weight: weight of the VGG16 feature distance; > 0 needs ``perceptual_weights_path``.
        perceptual_weights_path: a local torchvision VGG16 state dict (nothing is downloaded).
        gan_weight: weight of the PatchGAN generator term; > 0 adds a discriminator.
        gan_start_step: the training step from which the adversarial terms are on.
        compile_ms_ssim: compile the MS-SSIM term for training steps (``ReconstructionLoss(compile=...)``).
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        mse_weight: float = 1.0,
        ms_ssim_weight: float = 0.2,
        quant_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        perceptual_weights_path: str | None = None,
        gan_weight: float = 0.0,
        gan_start_step: int = 20000,
        compile_ms_ssim: bool = False,
    ):
        super().__init__()
        self.reconstruction = ReconstructionLoss(l1_weight, mse_weight, ms_ssim_weight, compile_ms_ssim)
        self.quant_weight, self.perceptual_weight = quant_weight, perceptual_weight
        self.gan_weight, self.gan_start_step = gan_weight, gan_start_step
        self.perceptual = None
        if perceptual_weight > 0:
            if not perceptual_weights_path:
                raise ValueError("perceptual_weight > 0 needs perceptual_weights_path (a local VGG16 state dict)")
            self.perceptual = PerceptualLoss(perceptual_weights_path)
        self.discriminator = PatchDiscriminator() if gan_weight > 0 else None

    def gan_active(self, step: int | None) -> bool:
        return self.discriminator is not None and step is not None and step >= self.gan_start_step

    def forward(self, recon: Tensor, target: Tensor, quant_loss: Tensor, step: int | None = None) -> dict[str, Tensor]:
        """recon, target: (B, 3, H, W); ``step`` is None outside training (no adversarial term)."""
        terms = self.reconstruction(recon, target)
        terms["quant"] = quant_loss
        terms["loss"] = terms["loss"] + self.quant_weight * quant_loss
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon, target)
            terms["loss"] = terms["loss"] + self.perceptual_weight * terms["perceptual"]
        if self.gan_active(step):
            terms["gan_g"] = -self.discriminator(recon).mean()
            terms["loss"] = terms["loss"] + self.gan_weight * terms["gan_g"]
        return terms

    def discriminator_loss(self, target: Tensor, recon: Tensor) -> Tensor:
        """The weighted hinge loss of the discriminator; ``recon`` is detached here."""
        d = self.discriminator
        return self.gan_weight * hinge_d_loss(d(target), d(recon.detach()))
