"""The whole-token prior (compressor.entropy.token_prior): exact round trips for several codebook sizes, what it
learns, its prior file, its header, LatentDataset, and crafted segments."""

import os
import subprocess
import sys

import pytest
import torch

from compressor.entropy.fit import fit_temporal, mean_bits_per_token
from compressor.entropy.priors import TemporalPrior
from compressor.entropy.stream import (PriorMismatchError, StreamError, decode_segment, encode_segment, load_prior,
                                       read_header, save_prior)
from compressor.entropy.token_prior import MAX_CODES, TokenPrior
from compressor.latents import LatentDataset, MissingPriorError
from tests.test_entropy import GRID, MODEL_ID, REPO, _write_shard, moving_tokens
from tests.test_entropy_adaptive import every_token_changes

CODEBOOKS = [2, 1000, 1009, 1024, 4096]


def segments_for(codebook: int) -> dict[str, torch.Tensor]:
    return {"moving": moving_tokens(12, seed=1, change=0.15, codebook=codebook),
            "one frame": moving_tokens(1, seed=2, codebook=codebook),
            "every token changes": every_token_changes(4, codebook),
            "extremes": torch.tensor([0, codebook - 1]).repeat(64)[None].expand(3, -1).clone(),
            "empty": torch.zeros(0, 128, dtype=torch.long)}


@pytest.fixture(scope="module")
def fitted() -> TokenPrior:
    """A token prior fitted briefly on 1024-code tokens where 90% of tokens repeat."""
    torch.manual_seed(0)
    prior = TokenPrior(1024, GRID, MODEL_ID, context=2, dim=16, depth=1)
    train = [{"tokens": moving_tokens(30, seed=s, codebook=1024), "meta": {}} for s in range(4)]
    fit_temporal(prior, train, steps=80, batch_size=8, lr=1e-2, log_every=1000)
    return prior


def fit_briefly(codebook: int) -> TokenPrior:
    """A tiny token prior fitted for a few steps on tokens that mostly repeat (95%): enough to learn the copy gate,
    so that it codes well below packing and the rANS path, not the stored fallback, is what gets tested."""
    torch.manual_seed(codebook)
    prior = TokenPrior(codebook, GRID, MODEL_ID, context=2, dim=8, depth=1)
    train = [{"tokens": moving_tokens(16, seed=100 + s, change=0.05, codebook=codebook), "meta": {}} for s in range(2)]
    fit_temporal(prior, train, steps=30, batch_size=4, lr=3e-2, log_every=1000)
    return prior.eval()


@pytest.mark.parametrize("codebook", CODEBOOKS)
def test_round_trip_is_exact_for_several_codebooks(codebook):
    prior = fit_briefly(codebook)
    for name, tokens in segments_for(codebook).items():
        data = encode_segment(tokens, prior)
        assert data == encode_segment(tokens, prior), name  # deterministic
        head = read_header(data)
        assert head["prior"] == "token" and data[5] == 5 and head["num_frames"] == len(tokens), name
        assert torch.equal(decode_segment(data, prior, len(tokens)), tokens), name
        if name == "moving":  # 85% repeats: the fitted prior codes them, packing would cost more
            assert not head["stored"], f"{codebook} codes: the token prior fell back to packing"


def test_a_fitted_prior_learns_to_copy_and_codes_near_its_ideal_length(fitted):
    val = moving_tokens(30, seed=9, codebook=1024)
    bits = mean_bits_per_token(fitted, [{"tokens": val, "meta": {}}])
    assert bits < 0.5 * 10  # 90% repeats: well under half of 10-bit packing
    data = encode_segment(val, fitted)
    assert torch.equal(decode_segment(data, fitted), val)
    ideal = float(fitted.bits(val).sum()) / 8
    assert len(data) - 44 <= ideal * 1.03 + 16  # 16-bit rANS stays within a few % of the ideal length


def test_phase_b_sees_phase_a_and_phase_a_sees_only_the_past(fitted):
    """The decoder has only phase A's tokens when it decodes phase B: phase A's logits must not depend on this frame,
    phase B's only on phase A's positions."""
    tokens = moving_tokens(3, seed=3, codebook=1024)
    past, cur = fitted.past_of(tokens, 2), tokens[2:3, :, None]
    other = cur.clone()
    b = fitted._phase_b
    other[0, b] = (other[0, b] + 7) % 1024  # change phase B's tokens only
    e = fitted.past_features(past)
    with torch.no_grad():
        assert torch.equal(fitted.phase_logits(e, past, cur, 0), fitted.phase_logits(e, past, other * 0, 0))
        assert torch.equal(fitted.phase_logits(e, past, cur, 1), fitted.phase_logits(e, past, other, 1))
        changed_a = cur.clone()
        changed_a[0, ~b] = (changed_a[0, ~b] + 7) % 1024
        assert not torch.equal(fitted.phase_logits(e, past, cur, 1), fitted.phase_logits(e, past, changed_a, 1))


def test_codebooks_it_does_not_code_are_refused():
    with pytest.raises(ValueError, match="temporal prior"):
        TokenPrior(15360, GRID)  # FSQ: the digit-wise priors
    with pytest.raises(ValueError):
        TokenPrior(MAX_CODES + 1, GRID)
    with pytest.raises(ValueError):
        TokenPrior(1, GRID)
    with pytest.raises(ValueError, match="tokens must lie"):
        encode_segment(torch.full((2, 128), 1024), TokenPrior(1024, GRID, dim=8, depth=1))


def test_prior_file_round_trips_and_segments_need_it(fitted, tmp_path):
    path = tmp_path / "prior-token.pt"
    save_prior(fitted, path)
    loaded = load_prior(path)
    assert isinstance(loaded, TokenPrior) and loaded.prior_id() == fitted.prior_id()
    tokens = moving_tokens(6, seed=4, codebook=1024)
    data = encode_segment(tokens, fitted)
    assert torch.equal(decode_segment(data, loaded), tokens)
    with pytest.raises(PriorMismatchError, match="pass that prior file"):
        decode_segment(data)
    other = TokenPrior(1024, GRID, MODEL_ID, dim=16, depth=1)  # same shape, other weights
    with pytest.raises(PriorMismatchError):
        decode_segment(data, other)
    temporal = TemporalPrior(1024, [8, 8, 8, 2], GRID, MODEL_ID, dim=8, depth=1)
    with pytest.raises(PriorMismatchError):
        decode_segment(data, temporal)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "bad.pt").write_bytes(bytes(damaged))
    with pytest.raises(ValueError):
        load_prior(tmp_path / "bad.pt")


def test_latent_dataset_reads_token_prior_segments(fitted, tmp_path):
    segments = [moving_tokens(5, seed=s, codebook=1024) for s in range(2)]
    _write_shard(tmp_path / "latents-000000.tar", segments, prior=fitted, plain=False)
    save_prior(fitted, tmp_path / "prior-token.pt")
    got = [w["tokens"] for w in LatentDataset(str(tmp_path), seq_len=5, prior=str(tmp_path / "prior-token.pt"))]
    assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, segments))
    with pytest.raises(MissingPriorError):
        list(LatentDataset(str(tmp_path), seq_len=5))


def test_truncated_and_corrupt_segments_are_refused(fitted):
    data = encode_segment(moving_tokens(5, seed=5, codebook=1024), fitted)
    for bad in (data[:-4], data[:40], data[:-1] + bytes([data[-1] ^ 1])):
        with pytest.raises(StreamError):
            decode_segment(bad, fitted)


@pytest.mark.slow
def test_crafted_token_prior_segments_never_crash_the_process(fitted, tmp_path):
    """tests/stream_fuzz.py's header and payload mutations (CRCs recomputed) on token-prior segments, in a child
    process: compressai's decoder is C++, and a crash there must fail this test, not the test run."""
    save_prior(fitted, tmp_path / "prior-token.pt")
    r = subprocess.run([sys.executable, "-m", "tests.stream_fuzz", str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, f"exit {r.returncode} at case {lines[-1] if lines else '?'}: {r.stderr[-2000:]}"
    outcomes = dict(line.split("\t", 1) for line in lines if line.startswith("token/"))
    assert len(outcomes) > 100
    bad = {case: out for case, out in outcomes.items() if not (out == "exact" or out.startswith("StreamError"))}
    assert not bad, bad
