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


def _distorted_pairs(frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Frames in [0, 1] and three distortions of them: noise, blur and a brightness shift (clipped)."""
    x = frames.float() / 255
    torch.manual_seed(0)
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    return [(x, (x + 0.08 * torch.randn_like(x)).clamp(0, 1)), (x, blurred), (x, (x + 0.1).clamp(0, 1))]


def _check_against_pytorch_msssim(frames: torch.Tensor) -> None:
    from pytorch_msssim import ms_ssim

    from compressor.metrics import ms_ssim_unit

    for x, y in _distorted_pairs(frames):
        ref = ms_ssim(y, x, data_range=1.0, size_average=False, win_size=7)
        torch.testing.assert_close(ms_ssim_unit(y, x), ref, atol=1e-5, rtol=0)


def test_fused_ms_ssim_equals_pytorch_msssim_on_generated_frames():
    from compressor.data.synthetic import driving_clip

    _check_against_pytorch_msssim(driving_clip(seed=3, num_frames=4, image_size=(128, 256)))


def test_fused_ms_ssim_equals_pytorch_msssim_on_real_frames(dashcam_dir):
    from compressor.data.video import list_videos, read_frames

    frames = torch.cat([read_frames(p, stride=40)[:2] for p in list_videos(dashcam_dir)[:4]])
    _check_against_pytorch_msssim(frames)


def test_ms_ssim_gradient_equals_pytorch_msssim():
    from pytorch_msssim import ms_ssim

    from compressor.metrics import ms_ssim_unit

    torch.manual_seed(0)
    target = torch.rand(2, 3, 128, 256)
    x = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ms_ssim_unit(ours, target).sum().backward()
    ms_ssim(ref, target, data_range=1.0, size_average=False, win_size=7).sum().backward()
    torch.testing.assert_close(ours.grad, ref.grad, atol=1e-6, rtol=1e-3)


def test_ms_ssim_refuses_frames_too_small_for_five_scales():
    from compressor.metrics import ms_ssim_unit

    with pytest.raises(ValueError, match="larger than 96"):
        ms_ssim_unit(torch.rand(1, 3, 96, 256), torch.rand(1, 3, 96, 256))
