"""Video-mode latents (issue 21, item 4): encode.py with a video codec writes groups of intra and conditional frames
that LatentDataset reads back as clips starting at an intra frame; evaluation, previews and the cards follow the
mode the checkpoint holds; per-frame latents stay exactly as they were."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds

import compressor
from compressor.codec.autoencoder import Autoencoder, load
from compressor.codec.checkpoint import model_id
from compressor.codec.video import VideoCodec
from compressor.data.synthetic import driving_clip
from compressor.data.video import read_frames
from compressor.entropy.adaptive import AdaptivePrior
from compressor.latents import DamagedShardError, LatentDataset, read_segments
from compressor.latents.card import render_card, write_card
from compressor.latents.groups import frame_tokens, unpad
from compressor.latents.manifest import write_merged_manifest
from compressor.latents.pipeline import encode_videos
from compressor.latents.samples import make_sample
from tests.conftest import tiny_model, video_codec, write_video

GOP = 4


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory) -> str:
    """A tiny video codec, groups of 4, whose conditional frames spend 32 tokens (merge 4): rows need padding."""
    path = str(tmp_path_factory.mktemp("video-model") / "video.pt")
    video_codec(merge=4, gop=GOP).save(path)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> str:
    """10 fps clips: 10 frames (two groups and a half) and 3 frames (shorter than a group)."""
    d = tmp_path_factory.mktemp("video-latents")
    write_video(str(d / "long.mp4"), driving_clip(11, 10, image_size=(180, 320)))
    write_video(str(d / "short.mp4"), driving_clip(12, 3, image_size=(180, 320)))
    return str(d)


def encode(model, videos: str, output, **kwargs) -> dict:
    """What encode.py does, in this process; returns {source: [segments in order]}."""
    kwargs = {"segment_seconds": 60.0, "batch_size": 3, "num_workers": 0, "progress": False, **kwargs}
    encode_videos(model, [videos], str(output), **kwargs)
    write_card(str(output), model, write_merged_manifest(str(output), [videos]), kwargs["segment_seconds"])
    found: dict[str, list] = {}
    for shard in sorted(output.glob("*.tar")):
        for seg in read_segments(str(shard)):
            found.setdefault(seg["meta"]["source"], []).append(seg)
    return {k: sorted(v, key=lambda s: s["meta"]["segment"]) for k, v in found.items()}


def test_video_round_trip_encode_write_read_decode_is_exact(tmp_path, codec_file, videos):
    codec = compressor.load(codec_file)  # the file says it is a video codec: no flag
    assert isinstance(codec, VideoCodec) and codec.gop == GOP
    prior = AdaptivePrior(codec.codebook_size, codec.grid, model_id(codec))  # entropy-coded segments carry it too
    segments = encode(codec, videos, tmp_path / "lat", prior=prior)  # batch 3 is rounded up to whole groups
    frames = read_frames(os.path.join(videos, "long.mp4"))
    tokens, recon = codec.encode_clip(frames)
    (seg,) = segments["long.mp4"]
    meta = seg["meta"]
    assert meta["mode"] == "video" and meta["gop"] == GOP and meta["frame_types"] == "IPPPIPPPIP"
    assert {k: v["num_tokens"] for k, v in meta["frame_formats"].items()} == {"I": 128, "P": 32}
    assert seg["tokens"].shape == (10, 128) and not seg["tokens"][1, 32:].any()  # P rows: 32 tokens, then zeros
    stored = unpad(seg["tokens"], frame_tokens(meta))
    assert all(torch.equal(a, b) for a, b in zip(stored, tokens, strict=True))  # exactly the codec's tokens
    assert torch.equal(codec.decode_clip(stored), recon)
    # LatentDataset: clips start at intra frames (one per group), carry their frame types, and decode alone; the
    # entropy-coded stream gives the same clips.
    for ds in (LatentDataset(tmp_path / "lat", seq_len=6), LatentDataset(tmp_path / "lat", seq_len=6, prior=prior)):
        clips = list(ds)
        assert [(c["source"], int(c["frame_index"][0])) for c in clips] == [("long.mp4", 0), ("long.mp4", 4)]
        for clip, start in zip(clips, (0, 4)):
            assert clip["frame_types"] == "IPPPIP"[: 6] and clip["frame_tokens"].tolist() == [128, 32, 32, 32, 128, 32]
            decoded = codec.decode_clip(unpad(clip["tokens"], clip["frame_tokens"]))
            assert torch.equal(decoded, recon[start : start + 6])
    # A preview decodes whole clips from the same file.
    from compressor.tools.preview import render

    assert render(codec_file, [str(tmp_path / "lat")], str(tmp_path / "preview.mp4")) == 10 + 3


def test_a_group_starts_at_every_segment_and_windows_only_at_intra_frames(tmp_path, codec_file, videos):
    codec = compressor.load(codec_file)
    # 6-frame segments of a 10-frame video: the second segment starts mid-group of the video, at frame 6, and
    # starts a group of its own there, as if the video began at frame 6.
    segments = encode(codec, videos, tmp_path / "lat", segment_seconds=0.6)["long.mp4"]
    frames = read_frames(os.path.join(videos, "long.mp4"))
    assert [s["meta"]["frame_types"] for s in segments] == ["IPPPIP", "IPPP"]
    assert [s["meta"]["first_frame"] for s in segments] == [0, 6]
    tokens, recon = codec.encode_clip(frames[6:])
    stored = unpad(segments[1]["tokens"], frame_tokens(segments[1]["meta"]))
    assert all(torch.equal(a, b) for a, b in zip(stored, tokens, strict=True))
    assert torch.equal(codec.decode_clip(stored), recon)
    # Windows every 8 frames (a multiple of the group) are fine; a window that would start at a P frame is refused.
    assert [int(c["frame_index"][0]) for c in LatentDataset(tmp_path / "lat", seq_len=2, stride=8)] == [0, 6, 0]
    with pytest.raises(ValueError, match="stride must be a multiple of 4"):
        list(LatentDataset(tmp_path / "lat", seq_len=2, stride=2))


def test_a_clip_shorter_than_a_group(tmp_path, codec_file, videos):
    codec = compressor.load(codec_file)
    (seg,) = encode(codec, videos, tmp_path / "lat")["short.mp4"]
    assert seg["meta"]["frame_types"] == "IPP"  # one intra frame, fewer conditional frames than a group has
    frames = read_frames(os.path.join(videos, "short.mp4"))
    tokens, recon = codec.encode_clip(frames)
    clips = [c for c in LatentDataset(tmp_path / "lat", seq_len=3) if c["source"] == "short.mp4"]
    assert len(clips) == 1 and clips[0]["frame_types"] == "IPP"
    stored = unpad(clips[0]["tokens"], clips[0]["frame_tokens"])
    assert all(torch.equal(a, b) for a, b in zip(stored, tokens, strict=True))
    assert torch.equal(codec.decode_clip(stored), recon)


PER_FRAME_JSON = {"source", "segment", "first_frame", "frame_indices", "timestamps", "fps", "source_fps",
                  "original_size", "model_id", "codebook_size", "num_tokens", "token_layout", "bits_per_token",
                  "bytes_per_frame", "image_size", "num_frames", "tokens_crc32", "meta_crc32"}


def test_the_per_frame_default_is_unchanged(tmp_path, codec_file, videos):
    model = tiny_model()
    model.save(tmp_path / "model.pt")
    assert type(compressor.load(tmp_path / "model.pt")) is Autoencoder  # per-frame files load as before
    with pytest.raises(ValueError, match="video codec"):
        load(codec_file)  # the per-frame loader says what the file is
    segments = encode(model, videos, tmp_path / "lat")
    meta = segments["long.mp4"][0]["meta"]
    assert set(meta) == PER_FRAME_JSON  # no mode, gop or frame types: the samples are as they were
    frames = read_frames(os.path.join(videos, "long.mp4"))
    assert torch.equal(segments["long.mp4"][0]["tokens"], model.encode(frames))
    windows = list(LatentDataset(tmp_path / "lat", seq_len=2))  # stride 1, every frame a start, as before
    assert [int(w["frame_index"][0]) for w in windows if w["source"] == "long.mp4"] == list(range(9))
    assert set(windows[0]) == {"tokens", "source", "segment", "frame_index", "model_id"}
    card = (tmp_path / "lat" / "README.md").read_text()
    assert "Per-frame: every frame is coded on its own" in card and "frame_types" not in card
    assert "Mode: per-frame." in str(model.generate_model_card())  # the Hub model card


def test_the_dataset_card_records_the_mode_and_its_reader_runs(tmp_path, codec_file, videos):
    codec = compressor.load(codec_file)
    segments = encode(codec, videos, tmp_path / "lat", segment_seconds=0.6)
    card = (tmp_path / "lat" / "README.md").read_text()
    assert "## Mode" in card and f"groups of {GOP} frames" in card and "| `P` | 32 | 8x4 row-major" in card
    assert "mode, gop, frame_types, frame_formats" in card
    block = card.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # the LatentDataset snippet of a video-mode folder
    expected = {(s["meta"]["source"], s["meta"]["segment"]): s["tokens"].numpy() for v in segments.values() for s in v}
    assert namespace["segments"].keys() == expected.keys()
    assert all(np.array_equal(namespace["segments"][k], v) for k, v in expected.items())
    assert [c["frame_types"] for c in LatentDataset(tmp_path / "lat", seq_len=5)] == ["IPPPI"]  # the 6-frame segment
    assert render_card({"videos": {}, "shards": {}}, codec, str(tmp_path)).count("Video: each segment") == 1


def test_evaluate_runs_a_video_codec_on_whole_clips_without_a_flag(tmp_path, codec_file, videos):
    from compressor.tools import evaluate

    evaluate.main(["--checkpoint", codec_file, "--input", videos, "--checkpoints-only", "--output",
                   str(tmp_path / "eval"), "--device", "cpu"])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    (r,) = report["checkpoints"].values()
    assert r["mode"].startswith("video, groups of 4")
    # Bytes of I frames (224) and P frames (32 tokens of 10 bits: 40) in clips of 10 and 3 frames.
    assert [c["bytes_per_frame"] for c in r["clips"]] == pytest.approx([(3 * 224 + 7 * 40) / 10, (224 + 80) / 3])
    codec = compressor.load(codec_file)
    frames = read_frames(os.path.join(videos, "long.mp4"))
    from compressor.metrics import frame_psnr

    expected = frame_psnr(codec.decode_clip(codec.encode_clip(frames)[0]), frames).mean().item()
    assert r["clips"][0]["psnr"] == pytest.approx(expected)


def test_damaged_video_mode_samples_are_refused(tmp_path):
    codec = video_codec(merge=4, gop=GOP)
    base = {"source": "x.mp4", "segment": 0, "codebook_size": codec.codebook_size, "mode": "video", "gop": GOP,
            "frame_formats": codec.frame_formats()}
    good = np.zeros((5, 128), dtype=np.uint16)
    cases = {"padding": (good.copy(), {"frame_types": "IPPPI"}), "types": (good, {"frame_types": "IPPPP"}),
             "mode": (good, {"frame_types": "IPPPI", "mode": "movie"})}
    cases["padding"][0][2, 40] = 7  # a P row holds 32 tokens: a token after them is damage
    for name, (tokens, extra) in cases.items():
        path = str(tmp_path / f"{name}.tar")
        with wds.TarWriter(path) as tar:
            tar.write(make_sample(tokens, {**base, **extra}))
        with pytest.raises(DamagedShardError):
            list(read_segments(path))
    path = str(tmp_path / "good.tar")
    with wds.TarWriter(path) as tar:
        tar.write(make_sample(good, {**base, "frame_types": "IPPPI"}))
    assert len(list(read_segments(path))) == 1


def test_encode_py_gop_changes_the_group_and_a_resume_must_keep_it(tmp_path, codec_file, videos):
    import encode as encode_py

    out = tmp_path / "lat"
    args = ["--checkpoint", codec_file, "--input", videos, "--output", str(out), "--workers", "0"]
    assert encode_py.main(args + ["--gop", "3"]) == 0
    (seg,) = [s for shard in out.glob("*.tar") for s in read_segments(str(shard)) if s["meta"]["source"] == "long.mp4"]
    assert seg["meta"]["gop"] == 3 and seg["meta"]["frame_types"] == "IPPIPPIPPI"
    codec = compressor.load(codec_file)
    codec.gop = 3
    tokens, recon = codec.encode_clip(read_frames(os.path.join(videos, "long.mp4")))
    stored = unpad(seg["tokens"], frame_tokens(seg["meta"]))
    assert all(torch.equal(a, b) for a, b in zip(stored, tokens, strict=True))
    assert torch.equal(codec.decode_clip(stored), recon)
    assert "groups of 3 frames" in (out / "README.md").read_text()
    # Resuming with the codec's own group (4) would add groups of 4 to a folder of groups of 3: refused up front.
    with pytest.raises(SystemExit, match="holds groups of 3 frames.*--gop 3"):
        encode_py.main(args)
    with pytest.raises(SystemExit, match="--gop must be in"):
        encode_py.main(args + ["--gop", "0"])
    tiny_model().save(tmp_path / "model.pt")
    with pytest.raises(SystemExit, match="--gop is for video codecs"):
        encode_py.main(["--checkpoint", str(tmp_path / "model.pt"), "--input", videos, "--output",
                        str(tmp_path / "other"), "--gop", "3"])
