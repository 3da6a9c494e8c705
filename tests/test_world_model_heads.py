"""The ar-digits head's search and sampling against enumeration, the camera holdout, and an 8-frame context."""

import os

import pytest
import torch

from compressor.worldmodel import cli, data, score
from compressor.worldmodel.heads import ARDigitHead
from compressor.worldmodel.model import WorldModel, WorldModelConfig

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "world-model")


def ar_head(seed: int, scale: float, radices=(8, 8, 8, 6, 5)) -> ARDigitHead:
    torch.manual_seed(seed)
    head = ARDigitHead(16, int(torch.tensor(radices).prod()), list(radices), hidden=8)
    with torch.no_grad():  # scale sets how peaked the distributions are: 0.02 is the near-uniform initialisation
        for p in head.parameters():
            p.normal_(0, scale)
    return head


@pytest.mark.parametrize("scale", [0.02, 0.3, 1.0])
def test_ar_argmax_search_equals_the_enumerations_argmax(scale):
    for seed in range(8):
        head = ar_head(seed, scale)
        h = torch.randn(40, 16)
        full = head.full_log_probs(h)  # (40, 15360)
        got, want = head.argmax(h), full.argmax(-1)
        # The same code, or (float rounding between two batch shapes) one exactly as likely.
        same = got == want
        gap = full.gather(-1, want[:, None]) - full.gather(-1, got[:, None])
        assert same.float().mean() > 0.9 and gap.abs().max() < 1e-5, (seed, scale)


def test_ar_sampling_at_temperature_one_is_the_joint_distribution():
    head = ar_head(1, 1.0, radices=(3, 2, 2))
    h = torch.randn(1, 16)
    exact = head.full_log_probs(h)[0].exp()  # (12,)
    n = 20000
    draws = head.sample(h.expand(n, 16), 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=12).float() / n
    assert (freq - exact).abs().max() < 0.015  # 5 standard errors at most for any p
    # At another temperature it samples the tempered joint, p^(1/t) normalised (not per-digit tempering).
    tempered = torch.softmax(head.full_log_probs(h)[0] / 0.5, -1)
    draws = head.sample(h.expand(n, 16), 0.5, torch.Generator().manual_seed(0))
    assert (torch.bincount(draws, minlength=12).float() / n - tempered).abs().max() < 0.015


def segments_of(names: dict[str, int]) -> list[data.Segment]:
    return [data.Segment(name, 0, torch.zeros(frames, 4, dtype=torch.long)) for name, frames in names.items()]


def test_camera_holdout_holds_out_whole_cameras_deterministically():
    names = {f"dashcam/owner{c}__repo{c}__clip{v}.mp4": 20 + 7 * c for c in range(12) for v in range(3)}
    names["dashcam-extra/udacity__CarND-LaneLines-P1__a.mp4"] = 30
    names["dashcam/udacity__CarND-Vehicle-Detection__b.mp4"] = 30  # same owner, another repo: another camera
    segments = segments_of(names)
    fit, held = data.split_holdout(segments, 0.2, "camera")
    cameras = lambda segs: {data.camera_of(s.source) for s in segs}  # noqa: E731
    assert held and fit and not cameras(fit) & cameras(held)
    assert sum(len(s.tokens) for s in held) <= 0.2 * sum(len(s.tokens) for s in segments)
    assert len(cameras(held)) >= 2
    again = data.split_holdout(list(reversed(segments)), 0.2, "camera")[1]
    assert {s.source for s in again} == {s.source for s in held}
    assert data.camera_of("dashcam/udacity__CarND-LaneLines-P1__a.mp4") == "udacity__CarND-LaneLines-P1"
    # By video, the held-out videos' cameras keep their other videos in training.
    fit, held = data.split_holdout(segments, 0.2, "video")
    assert len(held) == round(0.2 * len(segments)) and cameras(fit) & cameras(held)


def test_names_without_a_camera_are_each_their_own():
    segments = segments_of({f"train{i}.npy": 10 for i in range(10)})
    fit, held = data.split_holdout(segments, 0.1, "camera")
    assert len(held) == 1 and len(fit) == 9


def tiny_model(head: str, frames: int) -> WorldModel:
    torch.manual_seed(0)  # 4 tokens a frame (a 2x2 grid), so that 8 frames stay small
    return WorldModel(WorldModelConfig(15360, 4, [8, 8, 8, 6, 5], frames, 32, 1, 2, 0.0, head)).eval()


@pytest.mark.parametrize("head", ["full", "ar-digits"])
def test_an_eight_frame_context_trains_generates_and_scores(head):
    model = tiny_model(head, 8)
    window = torch.randint(0, 15360, (2, 8, 4))
    assert model.window_log_probs(window).shape == (2, 7, 4)
    past = window[:, :7]
    nxt = model.next_frame(past)  # 7 frames of past through the key/value cache
    assert torch.equal(model.window_argmax(torch.cat([past, nxt[:, None]], 1))[:, -1], nxt)
    assert model.rollout(past, 3).shape == (2, 3, 4)  # each new frame from the last 7
    segments = [data.Segment(f"v{n}", 0, torch.randint(0, 15360, (n, 4))) for n in (3, 8, 13)]
    rows = score.model_bits(model, segments)
    assert sum(r[2] for r in rows.values()) == 4 * (2 + 7 + 12)  # every frame with a past, once
    assert len(data.TokenWindows(segments, 8)) == 1 + 6


def test_the_context_8_overlay_sets_eight_frames():
    args = cli._parse(["train", "--config", f"{CONFIGS}/reference.yaml",
                       "--config", f"{CONFIGS}/context-8.yaml"])
    assert args.context_frames == 8 and args.head == "full" and args.attention == "matmul"
    assert cli._parse(["train", "--config", f"{CONFIGS}/reference.yaml"]).context_frames == 4
