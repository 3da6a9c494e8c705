"""The training core (compressor.training.core) that every LightningModule uses: the EMA update against its formula,
AdamW's groups for every module, fused AdamW against the unfused one, and the export."""

from __future__ import annotations

import types

import pytest
import torch

from compressor.codec.decoders import ConditionalViTDecoder, ViTDecoder
from compressor.codec.encoders import ViTEncoder
from compressor.codec.quantizers import VQ, StandardizedFSQ, WhitenedFSQ
from compressor.training.core import adamw, calibrate_ema, ema_copy, param_groups, update_ema
from compressor.training.losses import CompressionLoss
from compressor.training.module import CompressorModule
from compressor.training.video import RememberModule, VideoModule
from tests.conftest import tiny_model


def test_update_ema_is_the_reference_formula_and_copies_every_buffer():
    torch.manual_seed(0)
    live = tiny_model(quantizer="fsq-std")
    ema = ema_copy(live)
    with torch.no_grad():
        for p in live.parameters():
            p.add_(torch.randn_like(p))
        norm = live.quantizer.norm
        norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2), norm.num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in ema.named_parameters()}
    step, decay = 40, 0.9  # the ramp (1 + 40) / (10 + 40) = 0.82 is below 0.9
    update_ema(ema, live, step, decay)
    d = min(decay, (1 + step) / (10 + step))
    for name, p in live.named_parameters():
        expected = d * before[name] + (1 - d) * p
        torch.testing.assert_close(dict(ema.named_parameters())[name], expected, atol=1e-6, rtol=1e-6)
    for (name, b), (_, live_b) in zip(ema.named_buffers(), live.named_buffers(), strict=True):
        assert torch.equal(b, live_b), name  # running statistics and counters too, not only the weights
    assert not any(p.requires_grad for p in ema.parameters())


def test_calibrate_ema_restores_each_layers_momentum_and_mode():
    torch.manual_seed(0)
    ema = tiny_model(quantizer="fsq-white")
    ema.quantizer.norm.momentum = 0.3
    frames = [torch.rand(2, 3, 128, 256) * 2 - 1 for _ in range(2)]
    calibrate_ema(ema, frames, ema.encode_to_codes)
    norm = ema.quantizer.norm
    assert norm.momentum == 0.3 and not norm.training and int(norm.num_batches_tracked) == 2


def modules(tmp_path) -> dict[str, torch.nn.Module]:
    """One of each LightningModule, with a VQ (a codebook) wherever a quantizer can be one."""
    intra = tmp_path / "intra.pt"
    tiny_model(quantizer="vq").save(intra)

    def video(quantizer):  # a conditional codec composed as the video configs compose it, at tiny sizes
        return VideoModule(str(intra), ViTEncoder(dim=32, depth=1, heads=2, in_channels=6), quantizer,
                           ConditionalViTDecoder(dim=32, depth=1, heads=2), init_from_intra=False)

    return {
        "frames, VQ": CompressorModule(ViTEncoder(dim=32, depth=1, heads=2), VQ(codebook_size=256, dim=8),
                                       ViTDecoder(dim=48, depth=1, heads=2), CompressionLoss()),
        "frames, whitened FSQ": CompressorModule(ViTEncoder(dim=32, depth=1, heads=2), WhitenedFSQ(),
                                                 ViTDecoder(dim=48, depth=1, heads=2), CompressionLoss()),
        "video, VQ": video(VQ(codebook_size=256, dim=8)),
        "video, standardized FSQ": video(StandardizedFSQ()),
        "remember": RememberModule(str(intra)),
    }


def test_every_module_decays_matrices_only_never_norms_biases_or_codebooks(tmp_path):
    for label, module in modules(tmp_path).items():
        module._trainer = types.SimpleNamespace(max_steps=10, estimated_stepping_batches=10)  # all the schedule reads
        [opt], _ = module.configure_optimizers()
        names = {id(p): n for n, p in module.named_parameters()}
        decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        assert decayed and plain, label
        assert not [n for n in decayed if n.endswith(("bias", "codebook", "missing")) or ".norm" in n], label
        assert all(dict(module.named_parameters())[n].ndim >= 2 for n in decayed), label
        # and every trainable parameter is in a group: none is left untrained
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        assert trainable == decayed | plain, label
        if "VQ" in label:
            assert any(n.endswith("codebook") for n in plain), label
        assert opt.defaults["fused"], label  # CPU float parameters: the fused kernel


def test_fused_adamw_steps_as_the_unfused_one():
    torch.manual_seed(0)

    def tiny() -> torch.nn.Module:  # a matrix, a norm and biases: both groups
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.GELU(), torch.nn.Linear(32, 4))

    models = [tiny(), tiny()]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0][0].weight.detach().clone()
    fused = adamw(param_groups(models[0].named_parameters(), 0.05), 1e-2, (0.9, 0.95))
    plain = torch.optim.AdamW(param_groups(models[1].named_parameters(), 0.05), lr=1e-2, betas=(0.9, 0.95),
                              foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randn(64, 16)
    for _ in range(5):
        for model, opt in zip(models, (fused, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert not torch.equal(models[0][0].weight, start)  # they moved, and alike
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_adamw_falls_back_to_foreach_where_there_is_no_fused_kernel(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("no fused kernel here")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = adamw([{"params": [torch.nn.Parameter(torch.zeros(3))]}], 1e-3, (0.9, 0.95))
    assert opt.defaults["foreach"] and not opt.defaults["fused"]
