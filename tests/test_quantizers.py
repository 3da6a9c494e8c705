import math

import pytest
import torch

from compressor.codec.packing import token_bits
from compressor.codec.quantizers import FSQ, VQ


@pytest.mark.parametrize("levels", [[8, 8, 8, 6, 5], [8, 8, 8, 8, 4], [3, 5], [2, 2, 2]])
def test_fsq_every_token_round_trips(levels):
    fsq = FSQ(levels)
    tokens = torch.arange(math.prod(levels))
    codes = fsq.tokens_to_codes(tokens)
    assert codes.shape == (len(tokens), len(levels))
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_tokens(codes), tokens)


def test_fsq_quantizes_onto_the_code_grid():
    fsq = FSQ([8, 8, 8, 6, 5])
    out = fsq(torch.randn(4, 128, 5) * 3)
    assert out["tokens"].shape == (4, 128) and out["tokens"].dtype == torch.int64
    assert 0 <= out["tokens"].min() and out["tokens"].max() < fsq.codebook_size == 15360
    assert torch.equal(fsq.tokens_to_codes(out["tokens"]), out["codes"])


def test_fsq_straight_through_gradient():
    z = torch.randn(2, 8, 5, requires_grad=True)
    FSQ()(z)["codes"].sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_fsq_stays_float32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = FSQ()(torch.randn(2, 8, 5).bfloat16())
    assert out["codes"].dtype == torch.float32


def test_codebooks_over_14_bits_are_refused():
    with pytest.raises(ValueError, match="14-bit"):
        FSQ([8, 8, 8, 8, 8])
    with pytest.raises(ValueError):
        VQ(codebook_size=2**14 + 1)


def test_token_bits():
    assert token_bits(15360) == 14 and token_bits(16384) == 14 and token_bits(16385) == 15 and token_bits(2) == 1


def test_vq_codes_are_unit_norm_codebook_entries():
    vq = VQ(codebook_size=64, dim=4)
    out = vq.eval()(torch.randn(2, 16, 4))
    assert torch.allclose(out["codes"].norm(dim=-1), torch.ones(2, 16), atol=1e-5)
    assert torch.allclose(vq.tokens_to_codes(out["tokens"]), out["codes"], atol=1e-6)
    assert out["loss"] > 0


def test_vq_restarts_dead_codes_on_encoder_outputs():
    torch.manual_seed(0)
    vq = VQ(codebook_size=32, dim=4, dead_code_threshold=0.5, usage_decay=0.0).train()
    z = torch.randn(1, 8, 4)
    before = vq.codebook.detach().clone()
    vq(z)
    changed = (vq.codebook.detach() != before).any(dim=1)
    assert changed.sum() >= 32 - 8  # at most 8 codes can have been hit by 8 vectors
    # Restarted codes sit next to encoder outputs.
    z_n = torch.nn.functional.normalize(z[0], dim=-1)
    sims = torch.nn.functional.normalize(vq.codebook.detach()[changed], dim=-1) @ z_n.t()
    assert (sims.max(dim=1).values > 0.99).all()


def test_standardized_fsq_spreads_saturated_channels_over_their_levels():
    from compressor.codec.quantizers import StandardizedFSQ

    torch.manual_seed(0)
    # Inputs like a drifted projection's: offsets and scales that pin plain FSQ's channels to one end.
    z = torch.randn(16, 128, 5) * torch.tensor([0.3, 3.0, 1.0, 1.0, 0.5]) + torch.tensor([-4.0, 3.0, 0.0, 5.0, -6.0])

    def entropy(tokens, size):
        p = torch.bincount(tokens.flatten(), minlength=size).float()
        p = p[p > 0] / p.sum()
        return -(p * p.log2()).sum().item()

    plain, std = FSQ(), StandardizedFSQ(momentum=0.1).train()
    assert entropy(plain(z)["tokens"], 15360) < 5
    assert entropy(std(z)["tokens"], 15360) > 10.5  # near log2(2048 samples) = 11: almost every token distinct
    for _ in range(200):  # running statistics converge, so inference gives the same tokens as training
        std(z)
    train_tokens = std(z)["tokens"]
    out = std.eval()(z)
    assert (out["tokens"] == train_tokens).float().mean() > 0.98
    assert torch.equal(std.tokens_to_codes(out["tokens"]), out["codes"])


def test_whitened_fsq_decorrelates_its_channels_and_round_trips():
    from compressor.codec.quantizers import WhitenedFSQ

    torch.manual_seed(0)
    z = torch.randn(8, 128, 5)
    z[..., 1] = -0.9 * z[..., 0] + 0.2 * z[..., 1]  # two channels that move together, as the conv stem's did
    z = z * 3 + 1
    q = WhitenedFSQ().train()
    white = q.norm(z.reshape(-1, 5))
    torch.testing.assert_close(torch.cov(white.T), torch.eye(5), atol=1e-3, rtol=0)
    out = q(z)
    torch.testing.assert_close(q.tokens_to_codes(out["tokens"]), out["codes"])
    z.requires_grad_(True)
    q(z)["codes"].sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    q.eval()  # running statistics at inference: the same input gives the same tokens in any batch
    torch.testing.assert_close(q(z[:1].detach())["tokens"], q(z.detach())["tokens"][:1])
