import json
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from compressor.latents import LatentDataset
from compressor.codec.packing import from_digits, to_digits
from compressor.entropy.adaptive import AdaptivePrior
from compressor.entropy.coding import Decoder, Encoder, digit_radices, quantized_cdfs
from compressor.entropy.fit import fit_temporal
from compressor.entropy.priors import FactorisedPrior, StaticPrior, TemporalPrior
from compressor.entropy.stream import (HEADER_BYTES, PriorMismatchError, StreamError, decode_segment, encode_segment,
                                       load_prior, read_header, save_prior)
from compressor.latents import MissingPriorError
from compressor.codec.quantizers import FSQ

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = [8, 8, 8, 6, 5]
GRID = (8, 16)
MODEL_ID = "0123456789abcdef"


def moving_tokens(num_frames: int, seed: int = 0, change: float = 0.1,
                  codebook: int = math.prod(LEVELS)) -> torch.Tensor:
    """Token video with the redundancy of real ones: each frame repeats the last, with some tokens redrawn."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randint(0, codebook, (128,), generator=g)]
    for _ in range(num_frames - 1):
        f = frames[-1].clone()
        redraw = torch.rand(128, generator=g) < change
        f[redraw] = torch.randint(0, codebook, (int(redraw.sum()),), generator=g)
        frames.append(f)
    return torch.stack(frames)


@pytest.fixture(scope="module")
def priors() -> dict:
    train = [{"tokens": moving_tokens(40, seed=s), "meta": {}} for s in range(6)]
    tokens = torch.cat([s["tokens"] for s in train])
    out = {"static": StaticPrior(15360, LEVELS, GRID, MODEL_ID).fit(tokens),
           "factorised": FactorisedPrior(15360, LEVELS, GRID, MODEL_ID).fit(tokens)}
    temporal = TemporalPrior(15360, LEVELS, GRID, MODEL_ID, context=2, dim=32, depth=1)
    fit_temporal(temporal, train, steps=150, batch_size=16, lr=3e-3)
    out["temporal"] = temporal
    return out


def test_digits_are_the_fsq_channels_and_invert():
    tokens = torch.arange(15360)
    digits = to_digits(tokens, LEVELS)
    fsq = FSQ(LEVELS)
    codes = fsq.tokens_to_codes(tokens)
    assert torch.equal(digits, (codes * (fsq._levels // 2) + fsq._levels // 2).round().long())
    assert torch.equal(from_digits(digits, LEVELS), tokens)
    assert digit_radices(16384) == [8, 8, 8, 8, 4]  # a VQ codebook: 14 bits as base-8 digits
    assert torch.equal(from_digits(to_digits(torch.arange(16384), [8, 8, 8, 8, 4]), [8, 8, 8, 8, 4]),
                       torch.arange(16384))
    with pytest.raises(ValueError, match="multiply"):
        digit_radices(1000, [8, 8])


def test_any_codebook_size_splits_into_digits_of_at_most_8_symbols():
    # exact factorisations where the codebook has them, covering base-8 digits for what it does not
    assert digit_radices(1000) == [8, 5, 5, 5] and digit_radices(1024) == [8, 8, 8, 2]
    assert digit_radices(15360) == [8, 8, 8, 6, 5] and digit_radices(1009) == [8, 8, 8, 2]
    assert digit_radices(2018) == [2, 8, 8, 8, 2]  # 2 x 1009: the factor 2 exactly, then 1009 covered
    for size in [*range(2, 300), 1000, 1009, 1024, 4099, 15360, 16384]:
        radices = digit_radices(size)
        assert math.prod(radices) >= size and max(radices) <= 8 and min(radices) >= 2, size
        assert torch.equal(from_digits(to_digits(torch.arange(size), radices), radices), torch.arange(size))
    with pytest.raises(ValueError, match="do not cover"):
        StaticPrior(1025, [8, 8, 8, 2], GRID, MODEL_ID)


@pytest.mark.parametrize("codebook", [1024, 1000, 1009])
def test_any_codebook_size_round_trips_under_every_prior(codebook):
    radices = digit_radices(codebook)
    tokens = moving_tokens(12, seed=codebook, codebook=codebook)
    tokens[0, :2] = torch.tensor([0, codebook - 1])  # both ends of the codebook
    for prior in (StaticPrior(codebook, radices, GRID, MODEL_ID).fit(tokens),
                  FactorisedPrior(codebook, radices, GRID, MODEL_ID).fit(tokens),
                  TemporalPrior(codebook, radices, GRID, MODEL_ID, dim=8, depth=1)):
        # the rANS path itself (encode_segment could fall back to stored packing for the untrained temporal prior)
        enc = Encoder()
        prior.encode(tokens, enc)
        dec = Decoder(enc.flush(), len(tokens) * len(prior.frame_alphabets()))
        assert torch.equal(prior.decode(dec, len(tokens)), tokens), prior.kind
        assert torch.equal(decode_segment(encode_segment(tokens, prior), prior), tokens), prior.kind


def test_priors_train_and_report_on_commavq_files_without_a_checkpoint(tmp_path):
    """commaVQ-layout .npy files (1024 codes, int16 (T, 8, 16)): train and report need no checkpoint."""
    from compressor.tools.entropy import main

    for split, seeds in {"train": range(3), "val": range(10, 12)}.items():
        os.makedirs(tmp_path / split)
        for s in seeds:
            tokens = moving_tokens(20, seed=s, codebook=1024).numpy().reshape(20, 8, 16).astype(np.int16)
            np.save(tmp_path / split / f"segment{s}.npy", tokens)
    assert main(["train", "--input", str(tmp_path / "train"), "--val-input", str(tmp_path / "val"), "--output",
                 str(tmp_path / "priors"), "--steps", "20", "--dim", "16", "--depth", "1"]) == 0
    paths = [str(tmp_path / "priors" / f"prior-{kind}.pt") for kind in ("static", "factorised", "temporal")]
    prior = load_prior(paths[2])
    assert (prior.codebook_size, prior.radices, prior.grid, prior.model_id) == (1024, [8, 8, 8, 2], (8, 16), "")
    assert main(["report", "--prior", *paths, "--input", str(tmp_path / "val"), "--output",
                 str(tmp_path / "report")]) == 0
    rows = {r["method"]: r for r in json.load(open(tmp_path / "report" / "report.json"))["rows"]}
    assert len(rows) == 9 and all(r["exact"] for r in rows.values())  # the adaptive coder's row too, unasked
    assert sum("adaptive" in method for method in rows) == 1
    assert rows["fixed 10-bit packing"]["bits_per_token"] == 10 and rows["fixed 10-bit packing"]["rate"] == 1
    baseline = rows["lzma (default preset) over int16, position-major (commaVQ's baseline)"]
    assert 0 < baseline["bits_per_token"] < 10
    assert baseline["rate"] == pytest.approx(10 / baseline["bits_per_token"], rel=1e-3)
    assert main(["train", "--input", str(tmp_path / "train")]) == 2  # no checkpoint and nowhere to save


def test_quantized_cdfs_are_valid_and_deterministic():
    probs = torch.tensor([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [1e-9, 0.5, 0.5 - 1e-9, 0], [0.7, 0.1, 0.1, 0.1]])
    cdf = quantized_cdfs(probs)
    assert cdf.shape == (4, 6) and cdf.dtype == np.int32
    freq = np.diff(cdf, axis=1)
    assert (cdf[:, 0] == 0).all() and (cdf[:, -1] == 1 << 16).all()
    assert (freq >= 1).all() and (freq[:, -1] == 1).all()  # every symbol codable; escape gets the minimum
    assert freq[0, 0] == (1 << 16) - 4 and np.ptp(freq[1, :4]) <= 4 and freq[2, 0] == freq[2, 3] == 1
    assert np.array_equal(cdf, quantized_cdfs(probs.clone()))


@pytest.mark.parametrize("kind", ["static", "factorised", "temporal"])
def test_round_trip_is_bit_exact(priors, kind):
    prior = priors[kind]
    for tokens in (moving_tokens(30, seed=99), moving_tokens(1, seed=7), torch.randint(0, 15360, (5, 128))):
        data = encode_segment(tokens, prior)
        assert torch.equal(decode_segment(data, prior), tokens)
        assert data == encode_segment(tokens, prior)  # deterministic bytes
    empty = torch.zeros(0, 128, dtype=torch.long)
    assert decode_segment(encode_segment(empty, prior), prior).shape == (0, 128)


def test_coded_size_follows_the_ideal_length_and_the_temporal_prior_wins(priors):
    tokens = moving_tokens(60, seed=123)  # unseen, same statistics
    sizes = {}
    for kind, prior in priors.items():
        enc = Encoder()
        prior.encode(tokens, enc)
        payload = len(enc.flush())  # the rANS payload itself, before the stored fallback
        assert len(encode_segment(tokens, prior)) == HEADER_BYTES + min(payload, 224 * len(tokens))
        ideal = float(prior.bits(tokens).sum()) / 8
        sizes[kind] = payload
        if kind == "static":  # 16-bit tables over 15360 symbols: the quantised model differs from the float one
            assert 0.85 * ideal <= payload <= 1.15 * ideal, (kind, payload, ideal)
        else:  # small alphabets: the coder is within 1% of the ideal code length
            assert 0.99 * ideal - 8 <= payload <= 1.01 * ideal + 8, (kind, payload, ideal)
    assert sizes["temporal"] < 0.6 * sizes["factorised"], sizes  # 10% of tokens change: most are predictable


def test_a_prior_that_does_not_fit_never_costs_more_than_packing(priors):
    tokens = torch.randint(0, 15360, (6, 128), generator=torch.Generator().manual_seed(1))  # unlike any training
    data = encode_segment(tokens, priors["temporal"])
    assert read_header(data)["stored"] and len(data) == HEADER_BYTES + 6 * 224
    assert torch.equal(decode_segment(data, priors["temporal"]), tokens)
    with pytest.raises(PriorMismatchError):  # stored segments still belong to one model and prior
        decode_segment(data, priors["factorised"])
    assert not read_header(encode_segment(moving_tokens(6), priors["temporal"]))["stored"]


def test_header_fields_and_every_failure_is_a_clear_error(priors):
    prior = priors["factorised"]
    tokens = moving_tokens(8, seed=5)
    data = encode_segment(tokens, prior)
    head = read_header(data)
    assert head == {"prior": "factorised", "stored": False, "model_id": MODEL_ID, "prior_id": prior.prior_id(), "num_frames": 8,
                    "num_tokens": 128, "token_crc": zlib.crc32(tokens.numpy().astype(np.uint16).tobytes()),
                    "payload_bytes": len(data) - HEADER_BYTES}
    flip = lambda b, i: b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]  # noqa: E731
    cases = {
        "magic": (b"XTOK" + data[4:], "not a coded token segment"),
        "version": (data[:4] + bytes([9]) + data[5:], "format version 9"),
        "truncated header": (data[:20], "truncated"),
        "truncated payload": (data[:-3], "header says"),
        "payload bit": (flip(data, HEADER_BYTES + 2), "CRC mismatch"),
        "frame count": (flip(data, 24), "CRC mismatch"),
        "last byte": (flip(data, len(data) - 1), "CRC mismatch"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(StreamError, match=message):
            decode_segment(bad, prior)
    other_model = FactorisedPrior(15360, LEVELS, GRID, "fedcba9876543210")
    other_model.load_state_dict(prior.state_dict())
    with pytest.raises(PriorMismatchError, match="model 0123456789abcdef"):
        decode_segment(data, other_model)
    with pytest.raises(PriorMismatchError, match="coded with factorised prior"):
        decode_segment(data, priors["temporal"])
    retrained = FactorisedPrior(15360, LEVELS, GRID, MODEL_ID).fit(moving_tokens(20, seed=77))
    with pytest.raises(PriorMismatchError, match="prior"):
        decode_segment(data, retrained)


def test_a_prior_that_evaluates_differently_is_caught_by_the_token_crc(priors, monkeypatch):
    prior = priors["factorised"]
    data = encode_segment(moving_tokens(8, seed=5), prior)
    twin = FactorisedPrior(15360, LEVELS, GRID, MODEL_ID)
    twin.load_state_dict(prior.state_dict())
    with torch.no_grad():  # what a different float result on another machine would look like
        twin.probs[:, :, :5] = twin.probs[:, :, :5].flip(-1)
    monkeypatch.setattr(twin, "prior_id", prior.prior_id)
    with pytest.raises(StreamError, match="checksum"):
        decode_segment(data, twin)


def test_prior_files_round_trip_and_refuse_damage(priors, tmp_path):
    for kind, prior in priors.items():
        path = tmp_path / f"prior-{kind}.pt"
        save_prior(prior, path)
        loaded = load_prior(path)
        assert type(loaded) is type(prior) and loaded.prior_id() == prior.prior_id()
        tokens = moving_tokens(6, seed=3)
        assert torch.equal(decode_segment(encode_segment(tokens, prior), loaded), tokens)
    blob = torch.load(tmp_path / "prior-factorised.pt", weights_only=True)
    blob["state_dict"]["probs"][0, 0, 0] += 0.01
    torch.save(blob, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="stored prior id"):
        load_prior(tmp_path / "damaged.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a prior file"):
        load_prior(tmp_path / "other.pt")


def _write_shard(path, segments, prior=None, plain=True):
    with wds.TarWriter(str(path)) as tar:
        for i, tokens in enumerate(segments):
            sample = {"__key__": f"v{i}__0000", "json": json.dumps({"source": f"v{i}.mp4", "segment": 0}).encode()}
            if plain:
                sample["tokens.npy"] = tokens.numpy().astype(np.uint16)
            if prior is not None:
                sample["tokens.ctok"] = encode_segment(tokens, prior)
            tar.write(sample)


def test_latent_dataset_reads_either_form(priors, tmp_path):
    segments = [moving_tokens(6, seed=s) for s in range(3)]
    prior = priors["temporal"]
    for name, kwargs in {"plain": {}, "coded": {"prior": prior, "plain": False}, "both": {"prior": prior}}.items():
        os.makedirs(tmp_path / name)
        _write_shard(tmp_path / name / "latents-000000.tar", segments, **kwargs)
    expected = [s[i : i + 3] for s in segments for i in range(4)]
    for name, prior_arg in [("plain", None), ("coded", prior), ("both", prior), ("both", None)]:
        got = [w["tokens"] for w in LatentDataset(str(tmp_path / name), seq_len=3, prior=prior_arg)]
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected)), name
    save_prior(prior, tmp_path / "prior.pt")  # by path, and decoded in a DataLoader worker (one thread)
    loader = DataLoader(LatentDataset(str(tmp_path / "coded"), seq_len=3, prior=str(tmp_path / "prior.pt")),
                        batch_size=None, num_workers=1)
    got = [w["tokens"] for w in loader]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(MissingPriorError, match="only entropy-coded"):
        list(LatentDataset(str(tmp_path / "coded"), seq_len=3))
    with pytest.raises(PriorMismatchError):
        list(LatentDataset(str(tmp_path / "coded"), seq_len=3, prior=priors["factorised"], skip_damaged=True))


@pytest.mark.slow
def test_cli_train_code_report(priors, tmp_path):
    """The three commands on shards with a real (tiny) checkpoint's model id."""
    from compressor.codec.checkpoint import model_id
    from tests.conftest import tiny_model

    model = tiny_model()
    ckpt = tmp_path / "model" / "model.pt"
    os.makedirs(ckpt.parent)
    model.save(ckpt)
    mid = model_id(model)
    for split, seeds in {"train": range(4), "val": range(10, 12)}.items():
        os.makedirs(tmp_path / split)
        with wds.TarWriter(str(tmp_path / split / "latents-000000.tar")) as tar:
            for s in seeds:
                tar.write({"__key__": f"v{s}__0000", "tokens.npy": moving_tokens(20, seed=s).numpy().astype(np.uint16),
                           "json": json.dumps({"source": f"v{s}.mp4", "segment": 0, "model_id": mid}).encode()})
    run = lambda *a: subprocess.run([sys.executable, "-m", "compressor.tools.entropy", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, cwd=REPO)
    r = run("train", "--checkpoint", ckpt, "--input", tmp_path / "train", "--val-input", tmp_path / "val",
            "--steps", 20)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(ckpt.parent)) == ["model.pt", "prior-factorised.pt", "prior-static.pt",
                                               "prior-temporal.pt"]
    r = run("code", "--prior", ckpt.parent / "prior-temporal.pt", "--input", tmp_path / "val", "--output",
            tmp_path / "coded")
    assert r.returncode == 0, r.stderr
    coded = list(LatentDataset(str(tmp_path / "coded"), seq_len=20, prior=str(ckpt.parent / "prior-temporal.pt")))
    assert [torch.equal(w["tokens"], moving_tokens(20, seed=s)) for w, s in zip(coded, (10, 11))] == [True, True]
    r = run("report", "--prior", *[ckpt.parent / f"prior-{k}.pt" for k in ("static", "factorised", "temporal")],
            "--input", tmp_path / "val", "--output", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    rows = json.load(open(tmp_path / "report" / "report.json"))["rows"]
    assert [r["exact"] for r in rows] == [True] * 9 and rows[0]["bytes_per_frame"] == 224  # 9: the adaptive row
    # an older adaptive version beside the current one, on the same tokens: each row codes with its own version
    static = ckpt.parent / "prior-static.pt"  # these tokens' json names no format: the prior gives it
    r = run("report", "--prior", static, "--input", tmp_path / "val", "--adaptive-versions", 2, 3, "--output",
            tmp_path / "versions")
    assert r.returncode == 0, r.stderr
    rows = [r for r in json.load(open(tmp_path / "versions" / "report.json"))["rows"]
            if r["method"].startswith("adaptive")]
    assert [r["method"] for r in rows] == ["adaptive v2 (no fitted prior)", "adaptive v3 (no fitted prior)"]
    assert [AdaptivePrior.from_id(r["prior_id"]).version for r in rows] == [2, 3] and all(r["exact"] for r in rows)
    r = run("report", "--prior", static, "--input", tmp_path / "val", "--adaptive-versions", 9)
    assert r.returncode == 2 and "adaptive prior version 9" in r.stderr
    # shards of another model are refused by name
    bad = tmp_path / "bad"
    os.makedirs(bad)
    with wds.TarWriter(str(bad / "latents-000000.tar")) as tar:
        tar.write({"__key__": "a", "tokens.npy": moving_tokens(3).numpy().astype(np.uint16),
                   "json": json.dumps({"model_id": "ffffffffffffffff"}).encode()})
    r = run("train", "--checkpoint", ckpt, "--input", bad, "--kinds", "static")
    assert r.returncode == 2 and "not of the checkpoint's model" in r.stderr


@pytest.mark.slow
def test_crafted_segments_never_crash_the_process_and_never_decode_to_other_tokens(priors, tmp_path):
    """Header fields and payloads mutated with recomputed CRCs (tests/stream_fuzz.py), in a child process: a
    segfault there fails this test instead of killing the test run."""
    for kind, prior in priors.items():
        save_prior(prior, tmp_path / f"prior-{kind}.pt")
    r = subprocess.run([sys.executable, "-m", "tests.stream_fuzz", str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, f"exit {r.returncode} at case {lines[-1] if lines else '?'}: {r.stderr[-2000:]}"
    outcomes = dict(line.split("\t", 1) for line in lines)
    assert len(outcomes) > 300
    bad = {case: out for case, out in outcomes.items() if not (out == "exact" or out.startswith("StreamError"))}
    assert not bad, bad


def test_a_zero_frame_header_is_checked_against_its_payload(priors):
    from tests.stream_fuzz import set_field

    prior = priors["factorised"]
    empty = encode_segment(torch.zeros(0, 128, dtype=torch.long), prior)
    assert decode_segment(empty, prior).shape == (0, 128)
    with pytest.raises(StreamError, match="frames"):
        decode_segment(set_field(encode_segment(moving_tokens(4), prior), "frames", 0), prior)
    with pytest.raises(StreamError):
        decode_segment(set_field(empty, "token_crc", 12345), prior)
