"""The reference world model (compressor.worldmodel): its loss, heads, cache, training, scoring, futures and probe,
on generated latents (our shard format and commaVQ's .npy layout)."""

import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds

from compressor.latents.samples import make_sample
from compressor.worldmodel import data, score
from compressor.worldmodel import cli
from compressor.worldmodel.cli import main
from compressor.worldmodel.generate import futures, sample_future
from compressor.worldmodel.model import WorldModel, WorldModelConfig
from compressor.worldmodel.module import load
from tests.conftest import tiny_model

MODEL_ID = "0123456789abcdef"
SMALL = ["--dim", "32", "--depth", "1", "--heads", "2", "--context-frames", "3", "--batch-size", "4"]


def markov_tokens(rng: np.random.Generator, frames: int, codebook: int, change: float = 0.2) -> np.ndarray:
    """(T, 128) tokens that mostly repeat the previous frame's, as dashcam tokens do."""
    tokens = np.empty((frames, 128), np.int64)
    tokens[0] = rng.integers(0, codebook, 128)
    for t in range(1, frames):
        new = rng.integers(0, codebook, 128)
        tokens[t] = np.where(rng.random(128) < change, new, tokens[t - 1])
    return tokens


def write_shards(directory, sources: int, frames: int, seed: int) -> None:
    """encode.py-format shards: one segment per source, FSQ codebook 15360 on an 8x16 grid."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    with wds.TarWriter(os.path.join(directory, "latents-000000.tar")) as tar:
        for s in range(sources):
            meta = {"source": f"clip{seed}-{s}.mp4", "segment": 0, "first_frame": 0, "model_id": MODEL_ID,
                    "codebook_size": 15360, "token_layout": "8x16 row-major", "bits_per_token": 14}
            tar.write(make_sample(markov_tokens(rng, frames, 15360), meta))


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    write_shards(root / "train", sources=4, frames=20, seed=0)
    write_shards(root / "val", sources=2, frames=14, seed=1)
    write_shards(root / "val-new-cameras", sources=1, frames=12, seed=2)
    return root


@pytest.fixture(scope="module")
def commavq(tmp_path_factory):
    """commaVQ's own layout: int16 (T, 8, 16), no json beside the files (so 1024 codes)."""
    root = tmp_path_factory.mktemp("commavq")
    rng = np.random.default_rng(3)
    for split, n in (("train", 3), ("val", 1)):
        os.makedirs(root / split)
        for i in range(n):
            np.save(root / split / f"{split}{i}.npy", markov_tokens(rng, 16, 1024).reshape(16, 8, 16).astype(np.int16))
    return root


def small_model(head: str = "full", codebook: int = 15360, radices=(8, 8, 8, 6, 5), frames: int = 3) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(codebook, 128, list(radices), frames, 32, 1, 2, 0.0, head)).eval()


HEADS = ["full", "digits", "ar-digits"]


@pytest.mark.parametrize("head", HEADS)
def test_loss_is_only_on_tokens_with_a_past(head):
    model = small_model(head)
    window = torch.randint(0, 15360, (2, 3, 128))
    seen = []
    log_probs = model.head.log_probs
    model.head.log_probs = lambda h, tokens: seen.append(tokens) or log_probs(h, tokens)
    out = model.window_log_probs(window)
    assert out.shape == (2, 2, 128)  # frames 2..T only: the first frame is context, never a target
    assert torch.equal(seen[0], window[:, 1:].reshape(2, -1))
    # Causal: changing frame 3 leaves the scores of frame 2 as they were.
    changed = window.clone()
    changed[:, 2] = torch.randint(0, 15360, (2, 128))
    assert torch.allclose(model.window_log_probs(changed)[:, 0], out[:, 0], atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_heads_are_distributions_over_the_codebook(head):
    model = small_model(head)
    with torch.no_grad():  # far from the near-uniform initialisation, so the digits interact
        for p in model.head.parameters():
            p.normal_(0, 0.5)
    h = torch.randn(3, 32)
    full = model.head.full_log_probs(h)  # (3, 15360)
    assert full.shape == (3, 15360)
    assert torch.allclose(full.exp().sum(-1), torch.ones(3, dtype=full.dtype), atol=1e-4)
    tokens = torch.tensor([0, 777, 15359])
    assert torch.allclose(model.head.log_probs(h, tokens), full[torch.arange(3), tokens], atol=1e-5)
    assert torch.equal(model.head.argmax(h), full.argmax(-1))


def test_ar_digit_head_conditions_each_digit_on_the_digits_before_it():
    model = small_model("ar-digits")
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.5)
    h = torch.randn(2, 32)
    full = model.head.full_log_probs(h).view(2, 5, 6, 8, 8, 8)  # (digit 4, 3, 2, 1, 0): most significant first
    # p(d_1 | d_0) is not the same for every d_0, unlike the independent digits head's.
    p_d1_given_d0 = full.logsumexp((1, 2, 3)).exp()  # (2, d1, d0), joint of the two least significant digits
    cond = p_d1_given_d0 / p_d1_given_d0.sum(1, keepdim=True)
    assert (cond - cond[..., :1]).abs().max() > 1e-3
    tokens = torch.randint(0, 15360, (2, 7))
    h = torch.randn(2, 7, 32)
    assert torch.allclose(model.head.log_probs(h, tokens),
                          model.head.full_log_probs(h).gather(-1, tokens[..., None])[..., 0], atol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_attention_kernels_agree(head):
    from compressor.codec.layers import set_attention_kernel

    model = small_model(head)
    window = torch.randint(0, 15360, (2, 3, 128))
    sdpa = model.window_log_probs(window)
    assert set_attention_kernel(model, "matmul") == 1
    assert torch.allclose(model.window_log_probs(window), sdpa, atol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_cached_greedy_frame_equals_the_teacher_forced_argmax(head):
    model = small_model(head)
    past = torch.randint(0, 15360, (2, 2, 128))
    nxt = model.next_frame(past)  # (2, 128), with the key/value cache
    window = torch.cat([past, nxt[:, None]], 1)
    assert torch.equal(model.window_argmax(window)[:, -1], nxt)


@pytest.mark.parametrize("head", HEADS)
def test_generation_is_reproducible_under_a_seed(head):
    model = small_model(head, frames=4)
    context = torch.randint(0, 15360, (3, 128))
    a = sample_future(model, context, 2, temperature=1.0, seed=5)
    assert torch.equal(a, sample_future(model, context, 2, temperature=1.0, seed=5))
    assert not torch.equal(a, sample_future(model, context, 2, temperature=1.0, seed=6))


def test_scoring_windows_score_every_frame_once():
    for length in (1, 2, 3, 7, 8, 9, 30):
        scored = [f for start, end, first in data.scoring_windows(length, 8) for f in range(first, end)]
        assert scored == list(range(1, length))
        assert all(end - start == min(8, length) for start, end, _ in data.scoring_windows(length, 8))


@pytest.mark.slow
@pytest.mark.parametrize("head", ["digits", "ar-digits"])
def test_train_score_and_futures_on_generated_latents(latents, tmp_path, head):
    run = tmp_path / "run"
    facts = main(["train", "--train", str(latents / "train"), "--output", str(run), "--max-steps", "6",
                  "--val-every", "3", *SMALL, "--head", head])
    assert facts["steps"] == 6 and facts["holdout_sources"]  # one video held out for early stopping
    model, fmt, _ = load(str(run / "world_model.pt"))
    assert fmt.radices == [8, 8, 8, 6, 5] and fmt.model_id == MODEL_ID and model.config.head == head
    result = main(["score", "--checkpoint", str(run / "world_model.pt"), "--train", str(latents / "train"),
                   "--val", str(latents / "val"), str(latents / "val-new-cameras"), "--output", str(tmp_path / "rep")])
    assert [s["name"] for s in result["sets"]] == ["val", "val-new-cameras"]
    rows = result["sets"][0]["rows"]
    assert result["sets"][0]["tokens_scored"] == 2 * 13 * 128  # every frame with a past
    assert {"world model", "unigram (train)", "copy previous", "adaptive coder"} <= set(rows)
    assert 0 < rows["copy previous"]["accuracy"] < 1 and rows["world model"]["bits_per_token"] > 0
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["sets"][1]["frames"] == 12
    # Pixels and futures with a tiny compressor of the same codebook (its weights are random: shapes only).
    codec = tiny_model()
    segments, _ = data.read_segments(str(latents / "val"))
    pixels = score.pixel_scores(model, codec, segments, horizons=(1, 2), rollout_stride=4)
    assert set(next(iter(pixels.values()))) == {1, 2} and all(p[1]["n"] > 0 for p in pixels.values())
    written = futures(model, codec, segments, str(tmp_path / "futures"), context=2, frames=3, temperature=1.0)
    assert len(written) == 2 and all(os.path.getsize(w["png"]) and os.path.getsize(w["mp4"]) for w in written)


@pytest.mark.slow
def test_train_resumes_from_the_last_checkpoint(latents, tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    args = ["train", "--train", str(latents / "train"), "--output", str(run), "--val-every", "3", *SMALL,
            "--head", "ar-digits", "--attention", "matmul", "--warmup-steps", "2", "--lr", "1e-3"]
    first = main([*args, "--max-steps", "4"])
    assert first["steps"] == 4 and first["resumed_from"] is None and last.exists()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["schedule_progress"] == 1.0  # the cosine ended at max_steps
    second = main([*args, "--max-steps", "7", "--max-minutes", "5"])
    assert second["steps"] == 7 and second["resumed_from"] == str(last)  # global_step went on from 4
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 7
    # The schedule went on from where it was (its floor, 10% of the peak), not back up the cosine by steps.
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    model, _, _ = load(str(run / "world_model.pt"))
    assert model.config.head == "ar-digits"
    assert main([*args, "--max-steps", "2", "--no-resume"])["resumed_from"] is None


def test_a_resumed_schedule_goes_on_from_its_progress():
    import time

    from compressor.worldmodel.module import WorldModelModule

    config = dict(codebook_size=64, num_tokens=128, radices=[8, 8], context_frames=2, dim=16, depth=1, heads=2)
    m = WorldModelModule(config, warmup_steps=10, max_steps=110, max_minutes=10)
    m._started = time.monotonic()
    assert m.progress(60) == pytest.approx(0.5)  # by steps, the clock barely started
    m.on_load_checkpoint({"schedule_progress": 0.8})  # resumed at 80%: the next 10 minutes take it to 1
    assert m.progress(60) == pytest.approx(0.8, abs=1e-3)
    m._started -= 300  # 5 of this invocation's 10 minutes gone
    assert m.progress(60) == pytest.approx(0.9, abs=1e-3)


@pytest.mark.slow
def test_trains_and_scores_on_a_commavq_layout_folder(commavq, tmp_path):
    main(["train", "--train", str(commavq / "train"), "--output", str(tmp_path / "run"), "--max-steps", "3",
          *SMALL])
    model, fmt, _ = load(str(tmp_path / "run" / "world_model.pt"))
    assert fmt.codebook_size == 1024 and model.head.proj.out_features == 1024
    result = main(["score", "--checkpoint", str(tmp_path / "run" / "world_model.pt"), "--train",
                   str(commavq / "train"), "--val", str(commavq / "val"), "--output", str(tmp_path / "rep")])
    assert result["sets"][0]["tokens_scored"] == 15 * 128


@pytest.mark.slow
def test_probe_cli_writes_its_report(latents, tmp_path):
    main(["probe", "--input", str(latents), "--max-steps", "4", "--output", str(tmp_path / "probe")])
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    assert [s["name"] for s in report["sets"]] == ["val", "val-new-cameras"]
    assert report["probe"]["max_steps"] == 4 and report["training"]["steps"] == 4
    assert "adaptive coder" in report["sets"][0]["rows"]
    assert (tmp_path / "probe" / "report.md").read_text().startswith("# World model")


def test_console_script_exits_zero_when_a_command_returns_its_result(monkeypatch, tmp_path):
    """The console script's exit status: ``sys.exit(main())`` with main's result dict exits 1 after a good run."""
    monkeypatch.setattr(cli, "cmd_probe", lambda args: {"bits_per_token": 1.0})
    argv = ["probe", "--input", str(tmp_path), "--output", str(tmp_path / "probe")]
    assert main(argv) == {"bits_per_token": 1.0}
    with pytest.raises(SystemExit) as exit_:
        import sys

        sys.exit(cli.console(argv))
    assert exit_.value.code == 0
