"""python -m compressor.tools.evaluate_video scores every codec (a video codec, a decoder that remembers, a per-frame
model) through the clip API, the one place that says which frames are intra and what a frame costs, and refuses bad
input with a message, not a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.codec.clips import transmit
from compressor.data.synthetic import driving_clip
from compressor.data.video import read_frames
from compressor.metrics import frame_psnr
from compressor.tools import evaluate_video
from tests.conftest import tiny_model, write_video
from tests.test_remembering_codec import remembering_codec


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_video(str(folder / "val.mp4"), driving_clip(seed=4, num_frames=6))
    return folder


def run(tmp_path, checkpoint: str, *inputs: str) -> dict:
    out = tmp_path / "report"
    assert evaluate_video.main(["--checkpoint", checkpoint, "--input", *inputs, "--split", "", "--gop", "4",
                                "--output", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def test_a_remembering_decoder_is_scored_as_it_decodes_the_packed_tokens(tmp_path, clip_dir):
    codec = remembering_codec()
    codec.save(tmp_path / "remembering.pt")
    report = run(tmp_path, str(tmp_path / "remembering.pt"), str(clip_dir))
    frames = read_frames(str(clip_dir / "val.mp4"), codec.image_size)
    received, sizes = transmit(codec, list(codec.intra.encode(frames)))
    remembered = frame_psnr(codec.decode_clip(received), frames).mean().item()
    alone = frame_psnr(codec.intra.decode(torch.stack(received)), frames).mean().item()
    assert report["history"] == 2 and list(report["gops"]) == ["1"]  # no conditional frames: its own groups only
    assert report["psnr_clip_mean"] == pytest.approx(remembered, abs=1e-4)
    assert report["intra_only_psnr_clip_mean"] == pytest.approx(alone, abs=1e-4) and abs(remembered - alone) > 1e-3
    assert report["bytes_per_frame"] == sum(sizes) / len(sizes) == codec.bytes_per_frame
    assert report["clips"]["val.mp4"]["frames"] == 6 and report["skipped"] == {}


def test_a_per_frame_model_is_its_own_intra_only_control(tmp_path, clip_dir):
    tiny_model().save(tmp_path / "model.pt")
    report = run(tmp_path, str(tmp_path / "model.pt"), str(clip_dir))
    assert report["psnr_clip_mean"] == pytest.approx(report["intra_only_psnr_clip_mean"])
    assert report["gops"]["1"]["psnr_by_position"] == [pytest.approx(report["psnr_clip_mean"])]


def test_an_undecodable_clip_is_skipped_and_reported(tmp_path, clip_dir, capsys):
    tiny_model().save(tmp_path / "model.pt")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.mp4").write_bytes(b"\x00not a video" * 50)
    report = run(tmp_path, str(tmp_path / "model.pt"), str(clip_dir / "val.mp4"), str(tmp_path / "in" / "bad.mp4"))
    [good], [bad] = report["clips"], report["skipped"]
    assert good.endswith("val.mp4") and bad.endswith("bad.mp4") and "skipping" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["empty folder", "foreign config", "not a model"])
def test_a_checkpoint_it_cannot_use_is_refused_with_a_message(tmp_path, clip_dir, capsys, what):
    path = tmp_path / "ckpt"
    if what == "not a model":
        path = tmp_path / "x.pt"
        torch.save({"format": "something else"}, path)
    else:
        path.mkdir()
        if what == "foreign config":
            (path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(SystemExit) as e:
        evaluate_video.main(["--checkpoint", str(path), "--input", str(clip_dir), "--split", "", "--output",
                             str(tmp_path / "report")])
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err
