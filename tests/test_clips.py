"""One codec interface (issue 38, item 3): a per-frame model answers the clip API of a video codec with groups of
one, so the encode pipeline, the dataset cards, preview and evaluation take one path for both kinds of codec."""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest
import torch

from compressor.codec.checkpoint import model_id
from compressor.codec.clips import FrameCodec, clip_codec, clip_tokens
from compressor.data.synthetic import driving_clip
from compressor.latents import pipeline
from compressor.latents.card import render_card
from compressor.latents.groups import codec_fields, frame_types
from compressor.latents.manifest import load_manifests
from compressor.tools.evaluate import codec_roundtrip
from tests.conftest import tiny_model, video_codec, write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The callers that must handle clips only; compressor/codec/clips.py is the one place that tells the kinds apart.
CALLERS = ("compressor/latents/pipeline.py", "compressor/latents/card.py", "compressor/tools/preview.py",
           "compressor/tools/evaluate.py", "compressor/tools/evaluate_video.py", "compressor/training/core.py",
           "encode.py")


def test_a_per_frame_model_is_a_clip_codec_with_groups_of_one():
    model, video = tiny_model(), video_codec(gop=4)  # the video codec's intra model is this very model
    codec = clip_codec(model, batch_size=2)  # batches smaller than the clip: the results do not depend on them
    frames = driving_clip(seed=3, num_frames=5)
    tokens, recon = codec.encode_clip(frames)
    assert isinstance(codec, FrameCodec) and codec.gop == 1 and len(tokens) == 5
    assert torch.equal(torch.stack(tokens), model.encode(frames))
    assert torch.equal(recon, model.decode(model.encode(frames)))
    assert torch.equal(codec.decode_clip(tokens), recon) and torch.equal(codec.decode_clip(torch.stack(tokens)), recon)
    # The same metadata as the video codec's, its intra frames' for the one frame type
    assert codec.frame_formats() == {"I": video.frame_formats()["I"]}
    for name in ("image_size", "grid", "num_tokens", "codebook_size"):
        assert getattr(codec, name) == getattr(video, name), name
    assert model_id(codec) == model_id(model)  # samples and priors name the model, never the adapter
    assert clip_codec(video) is video and clip_codec(codec) is codec
    with pytest.raises(TypeError, match="not a codec"):
        clip_codec(torch.nn.Linear(2, 2))


def test_per_frame_extras_are_capabilities_not_kinds():
    model, video = tiny_model(), video_codec(gop=4)
    codec, frames = clip_codec(model), driving_clip(seed=4, num_frames=3)
    assert hasattr(codec, "bytes_per_frame") and not hasattr(video, "bytes_per_frame")
    assert codec.supports_search and not getattr(video, "supports_search", False)
    assert torch.equal(torch.stack(clip_tokens(codec, frames, search_steps=2)), model.encode(frames, search_steps=2))
    assert all(torch.equal(a, b) for a, b in zip(clip_tokens(video, frames), video.encode_clip(frames)[0]))
    with pytest.raises(ValueError, match="per-frame"):
        clip_tokens(video, frames, search_steps=2)
    # The format each writes: per-frame samples as they always were, video-mode ones with their groups
    assert codec_fields(codec) == {"bits_per_token": model.bits_per_token, "bytes_per_frame": model.bytes_per_frame,
                                   "image_size": list(model.image_size)}
    assert codec_fields(video)["mode"] == "video" and codec_fields(video)["gop"] == 4


def test_evaluation_codes_both_kinds_through_one_round_trip():
    model, video = tiny_model(), video_codec(gop=2)
    frames = driving_clip(seed=5, num_frames=5)
    per_frame = codec_roundtrip(clip_codec(model, batch_size=2), frames)
    assert torch.equal(per_frame["recon"], model.decode(model.encode(frames)))
    assert per_frame["bytes_per_frame"] == model.bytes_per_frame
    grouped = codec_roundtrip(clip_codec(video), frames)
    assert torch.equal(grouped["recon"], video.encode_clip(frames)[1])
    formats = video.frame_formats()
    assert grouped["bytes_per_frame"] == sum(formats[k]["bytes_per_frame"] for k in frame_types(5, 2)) / 5


@pytest.mark.parametrize("kind", ["per-frame", "video"])
def test_the_encode_pipeline_takes_one_path_for_both_kinds(kind, tmp_path, monkeypatch):
    model = tiny_model() if kind == "per-frame" else video_codec(gop=2)
    write_video(str(tmp_path / "clip.mp4"), driving_clip(seed=6, num_frames=4))
    seen, real = [], pipeline.clip_tokens

    def spy(codec, frames, *args, **kwargs):
        seen.append((codec.gop, len(frames)))
        return real(codec, frames, *args, **kwargs)

    monkeypatch.setattr(pipeline, "clip_tokens", spy)
    pipeline.encode_videos(model, [str(tmp_path / "clip.mp4")], str(tmp_path / "lat"), batch_size=4, num_workers=0,
                           progress=False)
    assert seen == [(1 if kind == "per-frame" else 2, 4)]
    card = render_card(load_manifests(str(tmp_path / "lat")), model, str(tmp_path / "lat"))
    assert ("groups of 2 (video mode)" in card) == (kind == "video")


def test_no_caller_branches_on_the_kind_of_codec():
    for path in CALLERS:
        with open(os.path.join(REPO, path)) as f:
            source = f.read()
        assert not re.search(r"isinstance\([^)]*\b(VideoCodec|Autoencoder)\b", source), path


def test_one_intra_frame_rule_in_the_package():
    """Which frames are intra is decided in one place, compressor.codec.packing.frame_types: no other code of the
    package computes ``t % gop`` (a codec, an evaluator, an export check reading its own rule would drift from it)."""
    found = []
    for path in sorted(glob.glob(os.path.join(REPO, "compressor", "**", "*.py"), recursive=True)):
        if path.endswith(os.path.join("codec", "packing.py")):
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
                right = node.right
                name = right.attr if isinstance(right, ast.Attribute) else getattr(right, "id", "")
                if name == "gop":
                    found.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert not found, f"an intra-frame rule of its own: {found}"
