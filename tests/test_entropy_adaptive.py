"""The adaptive prior (compressor.entropy.adaptive): exact round trips for any codebook, segments that need no prior
file, the header checks and crafted payloads, and its place as the default in LatentDataset and the tools."""

import os
import random

import numpy as np
import pytest
import torch

from compressor.entropy.adaptive import WORK_FRAME, WORK_PER_BYTE, AdaptivePrior
from compressor.entropy.priors import TemporalPrior
from compressor.entropy.stream import (HEADER_BYTES, PriorMismatchError, StreamError, decode_segment, encode_segment,
                                       read_header)
from compressor.latents import LatentDataset, MissingPriorError
from tests.stream_fuzz import cases, set_field, with_payload
from tests.test_entropy import GRID, MODEL_ID, _write_shard, moving_tokens

CODEBOOKS = [1000, 1009, 1024, 15360, 16384]
# zlib.crc32 of the segment in test_the_coded_bytes_are_pinned_to_the_version, by adaptive version (version 2 as
# compressor bbbbd5e wrote it).
PINNED_CRC = {2: 574601023, 3: 1396128932, 4: 3394134446}
# zlib.crc32 of test_a_long_segment_codes_to_the_bytes_of_the_numpy_model's segment: version 2 as compressor 3c276c5
# (the numpy model, before the compiled loops) wrote it; version 3 (the same loops, other mixer steps) pinned at its
# introduction.
LONG_PINNED_CRC = {2: 1461291539, 3: 2811780336}
# zlib.crc32 of version-1 segments of the same tokens as compressor 5a5a247 (adaptive version 1) wrote them.
V1_PINNED_CRC = {1024: 4147961560, 15360: 611742163}


def every_token_changes(num_frames: int, codebook: int, seed: int = 0) -> torch.Tensor:
    """No token ever repeats the one before it at its position."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, codebook, (128,), generator=g)
    steps = torch.randint(1, codebook, (num_frames, 128), generator=g).cumsum(0)
    return torch.cat([first[None], (first + steps[:-1]) % codebook])


def segments_for(codebook: int) -> dict[str, torch.Tensor]:
    return {"moving": moving_tokens(24, seed=1, change=0.15, codebook=codebook),
            "one frame": moving_tokens(1, seed=2, codebook=codebook),
            "every token changes": every_token_changes(6, codebook),
            "static": moving_tokens(1, seed=3, codebook=codebook).expand(30, -1).clone(),
            "extremes": torch.tensor([0, codebook - 1]).repeat(64)[None].expand(3, -1).clone(),
            "empty": torch.zeros(0, 128, dtype=torch.long)}


@pytest.mark.parametrize("codebook", CODEBOOKS)
def test_round_trip_is_exact_for_any_codebook_without_a_prior_file(codebook):
    prior = AdaptivePrior(codebook, GRID, MODEL_ID)
    for name, tokens in segments_for(codebook).items():
        data = encode_segment(tokens, prior)
        assert data == encode_segment(tokens, AdaptivePrior(codebook, GRID, MODEL_ID)), name  # deterministic
        head = read_header(data)
        assert head["prior"] == "adaptive" and head["model_id"] == MODEL_ID, name
        assert torch.equal(decode_segment(data), tokens), name  # the header alone says how to decode
        if len(tokens) and not head["stored"]:
            ideal = float(prior.bits(tokens).sum()) / 8
            assert head["payload_bytes"] <= ideal * 1.02 + 16, name  # the ANS is within ~1% of the ideal length


def test_repeated_tokens_cost_little_and_a_static_scene_almost_nothing():
    moving = moving_tokens(200, seed=4, change=0.1, codebook=1024)
    coded = len(encode_segment(moving, AdaptivePrior(1024, GRID)))
    assert 8 * coded / moving.numel() < 0.3 * 10  # 90% repeats: well under a third of 10-bit packing
    static = moving[:1].expand(1000, -1).clone()
    first = len(encode_segment(static[:1], AdaptivePrior(1024, GRID)))
    # 999 repeated frames cost what their decoding asks the payload to pay (issue 39: ~0.35 B a frame), no more.
    paid = 999 * (WORK_FRAME + 1) / WORK_PER_BYTE
    assert len(encode_segment(static, AdaptivePrior(1024, GRID))) < first + paid + 16


def test_a_segment_records_its_coder_and_decodes_whatever_prior_is_given():
    tokens = moving_tokens(10, seed=5)
    data = encode_segment(tokens, AdaptivePrior(15360, GRID, MODEL_ID))
    assert data[6] == AdaptivePrior.coder and data[5] == 4  # coder byte, prior kind byte
    temporal = TemporalPrior(15360, [8, 8, 8, 6, 5], GRID, MODEL_ID, dim=8, depth=1)
    assert torch.equal(decode_segment(data, temporal), tokens)  # a fitted prior passed along is not used
    fitted = encode_segment(tokens, temporal)
    with pytest.raises(PriorMismatchError, match="pass that prior file"):
        decode_segment(fitted)  # a fitted prior's segment still needs its prior


def test_bad_parameters_and_versions_are_refused():
    with pytest.raises(ValueError):
        AdaptivePrior(1, GRID)
    with pytest.raises(ValueError):
        AdaptivePrior(1 << 17, GRID)
    data = bytearray(encode_segment(moving_tokens(4, seed=6), AdaptivePrior(15360, GRID)))
    data[16] = 9  # the version in the prior id
    with pytest.raises(StreamError, match="version"):
        decode_segment(set_field(bytes(data), "frames", 4))  # (set_field recomputes the CRC)


@pytest.mark.slow  # a crafted frame count under the payload's bound decodes garbage until the token CRC fails
def test_crafted_adaptive_segments_raise_stream_error_or_decode_exactly():
    """The header and payload mutations of tests/stream_fuzz.py, CRCs recomputed: constriction checks its own
    reads, so they run in this process."""
    rng = random.Random(0)
    prior = AdaptivePrior(15360, GRID, MODEL_ID)
    other = encode_segment(moving_tokens(8, seed=6), prior)
    outcomes = {}
    for name, tokens in {"moving": moving_tokens(8, seed=5), "random": torch.randint(0, 15360, (3, 128)),
                         "empty": torch.zeros(0, 128, dtype=torch.long)}.items():
        data = encode_segment(tokens, prior)
        variants = cases(data, len(tokens), rng)
        variants["another segment's payload"] = with_payload(data, other[HEADER_BYTES:])
        for case, bad in variants.items():
            try:
                got = decode_segment(bad)
                outcomes[f"{name}/{case}"] = "exact" if torch.equal(got, tokens) else "WRONG"
            except StreamError:
                outcomes[f"{name}/{case}"] = "error"
    assert "WRONG" not in outcomes.values(), [k for k, v in outcomes.items() if v == "WRONG"]
    assert outcomes["moving/frames=1000"] == "error" and outcomes["moving/payload halved"] == "error"
    assert sum(v == "error" for v in outcomes.values()) > 0.8 * len(outcomes)


def test_frames_per_payload_are_bounded_before_decoding():
    data = encode_segment(moving_tokens(3, seed=7), AdaptivePrior(15360, GRID))
    with pytest.raises(StreamError, match="holds at most"):
        decode_segment(set_field(data, "frames", 1 << 30))


def test_latent_dataset_reads_adaptive_segments_with_no_prior(tmp_path):
    segments = [moving_tokens(6, seed=s) for s in range(3)]
    os.makedirs(tmp_path / "coded")
    _write_shard(tmp_path / "coded" / "latents-000000.tar", segments, prior=AdaptivePrior(15360, GRID, MODEL_ID),
                 plain=False)
    got = [w["tokens"] for w in LatentDataset(str(tmp_path / "coded"), seq_len=3)]
    expected = [s[i : i + 3] for s in segments for i in range(4)]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    temporal = TemporalPrior(15360, [8, 8, 8, 6, 5], GRID, MODEL_ID, dim=8, depth=1)
    os.makedirs(tmp_path / "fitted")
    _write_shard(tmp_path / "fitted" / "latents-000000.tar", segments, prior=temporal, plain=False)
    with pytest.raises(MissingPriorError, match="only entropy-coded"):
        list(LatentDataset(str(tmp_path / "fitted"), seq_len=3))


def test_vq_like_tokens_beat_lzma_by_modelling_whole_tokens():
    """1024-code tokens whose changes revisit a few codes per position (flicker), as VQ tokens of a slow scene do."""
    import lzma

    from compressor.tools.entropy_report import position_major_int16

    rng = np.random.default_rng(0)
    choices = rng.integers(0, 1024, (128, 3))  # per position, three codes it flickers between
    state = np.zeros(128, np.int64)
    frames = []
    for _ in range(300):
        move = rng.random(128) < 0.2
        state[move] = rng.integers(0, 3, int(move.sum()))
        frames.append(choices[np.arange(128), state])
    tokens = torch.from_numpy(np.stack(frames))
    adaptive = len(encode_segment(tokens, AdaptivePrior(1024, GRID)))
    assert adaptive * 1.1 < len(lzma.compress(position_major_int16(tokens)))


def test_squash_and_stretch_are_integer_tables_that_invert():
    """The mixer's logistic functions are integer tables (no float exp: the same on every machine)."""
    from compressor.entropy.mixing import ONE, SQUASH, STRETCH, squash, stretch

    assert SQUASH.dtype == np.int64 and STRETCH.dtype == np.int64
    assert (np.diff(SQUASH) >= 0).all() and 0 < SQUASH[0] and SQUASH[-1] < ONE
    assert abs(int(squash(np.array([0]))[0]) - ONE // 2) < 32  # lpaq's table: 32752 at 0
    p = np.arange(256, ONE - 256, 61)
    assert np.abs(stretch(squash(stretch(p))) - stretch(p)).max() <= 2  # squash inverts stretch to its resolution
    assert (np.diff(stretch(p)) >= 0).all()


def test_mixer_learns_the_better_input_and_apm_corrects_a_biased_one():
    from compressor.entropy.mixing import APM, ONE, Mixer, stretch

    rng = np.random.default_rng(0)
    mixer, apm = Mixer(2, 1, [ONE // 2, ONE // 2], 64), APM(1)
    cost = []
    for _ in range(200):
        bits = (rng.random(256) < 0.9).astype(np.int64)
        good = np.where(bits == 1, 58000, 7000)  # knows the bit
        st = np.stack([stretch(good), stretch(np.full(256, ONE // 2))], 1)
        p = mixer.predict(st, np.zeros(256, np.int64))
        mixer.update(st, np.zeros(256, np.int64), p, bits)
        cost.append(-np.log2(np.where(bits == 1, p, ONE - p) / ONE).mean())
    assert mixer.w[0, 0] > 2 * mixer.w[0, 1] and cost[-1] < 0.5 * cost[0]
    for _ in range(50):  # the input says 50%, the bits are 1 in 90%
        bits = (rng.random(256) < 0.9).astype(np.int64)
        p, state = apm.refine(np.full(256, ONE // 2), np.zeros(256, np.int64))
        apm.update(state, bits)
    assert abs(int(p[0]) - 0.9 * ONE) < 0.05 * ONE


def test_the_coded_bytes_are_pinned_to_the_version():
    """Any change to the adaptive model changes these bytes: bump adaptive.VERSION (old segments then fail with a
    clear version error instead of decoding wrong) and update the pinned CRC here."""
    import zlib

    from compressor.entropy import adaptive

    tokens = moving_tokens(12, seed=11, change=0.2, codebook=1024)
    assert adaptive.VERSION == 4
    assert zlib.crc32(encode_segment(tokens, AdaptivePrior(1024, GRID, MODEL_ID))) == PINNED_CRC[4]
    assert zlib.crc32(encode_segment(tokens, AdaptivePrior(1024, GRID, MODEL_ID, version=3))) == PINNED_CRC[3]


def test_version_2_segments_still_code_and_decode_to_their_bytes():
    """Latents entropy-coded with version 2 (before the mixers' steps changed) stay readable, and version 2 still
    writes its own bytes: the header's version picks the steps."""
    import zlib

    tokens = moving_tokens(12, seed=11, change=0.2, codebook=1024)
    old = encode_segment(tokens, AdaptivePrior(1024, GRID, MODEL_ID, version=2))
    assert zlib.crc32(old) == PINNED_CRC[2]
    assert torch.equal(decode_segment(old), tokens)


@pytest.mark.parametrize("version", [2, 3])
def test_a_long_segment_codes_to_the_bytes_of_the_numpy_model(version):
    """400 frames of a codebook that is not a power of 2 (skipped tree branches): counts pass their limits and are
    halved, the mixers and APMs move far from their start, the frame flag's counts pass 255. The compiled loops
    (compressor.entropy.kernels) must give the very bytes the numpy model gave (version 2), and version 3 the bytes
    it was pinned to."""
    import zlib

    moving = moving_tokens(300, seed=12, change=0.2, codebook=15360)
    tokens = torch.cat([moving, moving[-1:].expand(100, -1)])  # then a static scene
    data = encode_segment(tokens, AdaptivePrior(15360, GRID, MODEL_ID, version=version))
    assert zlib.crc32(data) == LONG_PINNED_CRC[version]
    assert torch.equal(decode_segment(data), tokens)


def test_counts_are_summed_over_a_frame_then_halved_once():
    """The compiled count update equals the numpy update it replaced: sums per unique context, then each context
    over its table's limit halved once, also where one frame adds more than twice the limit."""
    from compressor.entropy.adaptive_model import _Tables

    def numpy_update(c, offsets, limits, idx, bits):  # compressor 3c276c5's _Tables.update
        at, where = np.unique((idx + offsets).ravel(), return_inverse=True)
        add = np.stack([np.bincount(where, minlength=len(at)),
                        np.bincount(where, weights=np.repeat(bits, idx.shape[1]), minlength=len(at))], 1)
        new = c[at] + add.astype(np.uint16)
        over = new[:, 0] > limits[np.searchsorted(offsets, at, side="right") - 1]
        new[over] = (new[over] + 1) >> 1
        c[at] = new

    rng = np.random.default_rng(0)
    sizes, limits = [4, 50, 3000], [30, 255, 1023]
    tables = _Tables(sizes, limits)
    expected = tables.c.copy()
    most = 0
    for _ in range(60):
        m = int(rng.integers(0, 500))
        idx = np.stack([rng.integers(0, size, m) for size in sizes], 1)
        bits = (rng.random(m) < rng.random()).astype(np.int64)
        tables.update(idx, bits)
        numpy_update(expected, tables.offsets, tables.limits, idx, bits)
        assert np.array_equal(tables.c, expected)
        most = max(most, np.bincount(idx[:, 0], minlength=4).max())
    assert most > 2 * limits[0] and expected[:4, 0].max() > limits[0]  # the cases above were met


@pytest.mark.parametrize("codebook", sorted(V1_PINNED_CRC))
def test_version_1_segments_written_before_version_2_still_decode(codebook):
    """Latents entropy-coded before version 2 stay readable: the header's version picks the model, no prior given."""
    import zlib

    tokens = moving_tokens(12, seed=11, change=0.2, codebook=codebook)
    old = encode_segment(tokens, AdaptivePrior(codebook, GRID, MODEL_ID, version=1))
    assert zlib.crc32(old) == V1_PINNED_CRC[codebook]  # the very bytes version 1 wrote
    assert torch.equal(decode_segment(old), tokens)
    new = encode_segment(tokens, AdaptivePrior(codebook, GRID, MODEL_ID))
    assert new != old and torch.equal(decode_segment(new), tokens)
