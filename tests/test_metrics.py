import math

import pytest
import torch
import torchvision

from compressor.metrics import LPIPS, frame_ms_ssim, frame_psnr


def test_psnr_of_known_noise_level():
    torch.manual_seed(0)
    frames = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)
    recon = frames + 10  # MSE 100 -> 10 log10(255^2 / 100) = 28.13 dB
    assert frame_psnr(recon, frames).tolist() == pytest.approx([10 * math.log10(255**2 / 100)] * 2, abs=1e-4)
    # Gaussian noise of std 5 (no clipping around 128): PSNR = 20 log10(255 / 5) = 34.15 dB, to sampling error.
    noisy = (frames.float() + 5 * torch.randn(frames.shape)).round().clamp(0, 255).to(torch.uint8)
    expected = 10 * math.log10(255**2 / (25 + 1 / 12))  # rounding adds a uniform error of variance 1/12
    assert frame_psnr(noisy, frames).tolist() == pytest.approx([expected] * 2, abs=0.1)


def test_ms_ssim_of_identical_frames_is_one_and_falls_with_noise():
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    assert torch.allclose(frame_ms_ssim(frames, frames), torch.ones(2), atol=1e-5)
    noisy = (frames.float() + 30 * torch.randn(frames.shape)).clamp(0, 255).to(torch.uint8)
    assert (frame_ms_ssim(noisy, frames) < 0.99).all()


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory):
    """Random weights in the two real file formats: lpips' vgg.pth and a torchvision VGG16 state dict."""
    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), d / "vgg16.pth")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS._CHANNELS)}
    torch.save(lin, d / "vgg.pth")
    return str(d / "vgg.pth"), str(d / "vgg16.pth")


def test_lpips_is_zero_for_identical_frames_and_grows_with_distortion(lpips_weights):
    lpips = LPIPS(*lpips_weights)
    frames = torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8)
    assert torch.allclose(lpips(frames, frames), torch.zeros(2), atol=1e-6)
    small = (frames.float() + 10 * torch.randn(frames.shape)).clamp(0, 255).to(torch.uint8)
    large = (frames.float() + 80 * torch.randn(frames.shape)).clamp(0, 255).to(torch.uint8)
    d_small, d_large = lpips(small, frames), lpips(large, frames)
    assert (d_small > 0).all() and (d_large > d_small).all()


def test_lpips_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="no download"):
        LPIPS(str(tmp_path / "missing.pth"), str(tmp_path / "vgg16.pth"))
