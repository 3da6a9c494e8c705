"""The fast training paths compute what the plain ones do: matmul attention against SDPA, the compiled MS-SSIM
loss against the eager one, and a training step on every CPU path."""

import pytest
import torch

from compressor.codec.layers import Attention, matmul_attention, set_attention_kernel
from compressor.training.losses import ReconstructionLoss, compiled_ms_ssim
from compressor.training.speed import EagerFallback
from tests.conftest import tiny_model


@pytest.mark.parametrize("causal", [False, True])
def test_matmul_attention_equals_sdpa_in_float32(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, requires_grad=True) for _ in range(3))
    ours = matmul_attention(q, k, v, causal)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_matmul_attention_kernel_matches_sdpa_under_bf16_autocast():
    torch.manual_seed(0)
    layer = Attention(64, 4)
    x = torch.randn(2, 128, 64)
    outs = {}
    for kernel in ("sdpa", "matmul"):
        assert set_attention_kernel(layer, kernel) == 1
        with torch.autocast("cpu", torch.bfloat16):
            outs[kernel] = layer(x).float()
    # bf16 keeps 8 bits of mantissa: both are within a few bf16 steps of the float32 answer
    set_attention_kernel(layer, "sdpa")
    exact = layer(x)
    scale = exact.abs().max()
    for out in outs.values():
        assert (out - exact).abs().max() < 0.02 * scale
    with pytest.raises(ValueError, match="attention kernel"):
        set_attention_kernel(layer, "flash")


def test_a_model_with_matmul_attention_encodes_like_sdpa():
    model = tiny_model().eval()
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    ref = model(frames.float() / 127.5 - 1)["recon"]
    assert set_attention_kernel(model, "matmul") > 0
    torch.testing.assert_close(model(frames.float() / 127.5 - 1)["recon"], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_ms_ssim_loss_equals_the_eager_loss_and_its_gradient():
    torch.manual_seed(0)
    target = torch.rand(4, 3, 128, 256) * 2 - 1
    recon = (target + 0.2 * torch.randn_like(target)).clamp(-1, 1)
    results = []
    for compile in (False, True):
        x = recon.clone().requires_grad_()
        terms = ReconstructionLoss(compile=compile)(x, target)
        terms["loss"].backward()
        results.append((terms["ms_ssim"].detach(), x.grad))
    # EagerFallback turns a failed compile into a warning and eager MS-SSIM, which would make the comparison
    # eager against eager: the compiled form must really have run.
    assert compiled_ms_ssim().compiled is not None, "torch.compile of ms_ssim_unit fell back to eager"
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-3)
    with torch.no_grad():  # evaluation stays eager (no recompile for other batch sizes): same value
        assert ReconstructionLoss(compile=True)(recon[:3], target[:3])["ms_ssim"] == pytest.approx(
            ReconstructionLoss()(recon[:3], target[:3])["ms_ssim"].item(), abs=1e-6)


def test_eager_fallback_drops_compile_only_when_compiling_fails(monkeypatch):
    def ms_ssim_like(x):
        if x.shape[-1] < 4:
            raise ValueError("frames too small")  # the function's own error, in eager mode too
        return x * 2

    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)  # a compiler that works
    fn = EagerFallback(ms_ssim_like, dynamic=False)
    with pytest.raises(ValueError, match="too small"):
        fn(torch.ones(2))
    assert fn.compiled is not None  # a caller's error does not turn compiling off for the rest of the run

    def broken(*args):
        raise RuntimeError("backend compiler failed")

    monkeypatch.setattr(torch, "compile", lambda fn, **options: broken)  # a compiler that fails
    fn = EagerFallback(ms_ssim_like)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert torch.equal(fn(torch.ones(4)), torch.full((4,), 2.0))
    assert fn.compiled is None
