"""Hostile file names and split values, generated here: a name never runs a command, and no input is dropped or
sent to the wrong split without a clear error.

A file name is data: a shard named ``pipe:touch PWNED #.tar`` that a glob or a folder listing finds is read as the
file it is (``pipe:`` is a command only in the caller's own string).
"""

import glob
import hashlib
import json
import os
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from compressor.data.synthetic import driving_clip
from compressor.data.video import list_videos, split_videos
from compressor.latents import LatentDataset, expand_urls
from compressor.latents.samples import make_sample
from compressor.tools.commavq import main as commavq_main
from compressor.tools.entropy import main as entropy_main
from compressor.tools.make_shards import main as make_shards_main
from tests.conftest import write_video

HOSTILE = "pipe:touch PWNED #.tar"
HOSTILE_DIR = "pipe:touch PWNED #"


def write_shard(path, sources=("a.mp4",), frames: int = 4, codebook: int = 64, offset: int = 0) -> np.ndarray:
    """A shard of one segment per source, tokens (frames, 8) below ``codebook``; returns the tokens."""
    tokens = ((np.arange(frames * 8).reshape(frames, 8) + offset) % codebook).astype(np.uint16)
    with wds.TarWriter(str(path), mtime=0) as sink:
        for source in sources:
            sink.write(make_sample(tokens, {"source": source, "segment": 0, "codebook_size": codebook,
                                            "token_layout": "2x4 row-major"}))
    return tokens


# ---- names ---------------------------------------------------------------------------------------------------
@pytest.fixture
def hostile_folder(tmp_path, monkeypatch):
    """A working directory (so globs see bare names) holding a shard named like a pipe: command, and a folder
    named like one holding a shard."""
    write_shard(tmp_path / HOSTILE)
    os.makedirs(tmp_path / HOSTILE_DIR)
    write_shard(tmp_path / HOSTILE_DIR / "a.tar")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("shards", ["*.tar", ["*.tar"], ".", HOSTILE_DIR, f"{HOSTILE_DIR}/*.tar", "*/*.tar"])
def test_a_shard_named_like_a_pipe_command_is_read_as_a_file(hostile_folder, shards):
    with pytest.warns(UserWarning, match="no manifest.json"):
        windows = list(LatentDataset(shards, seq_len=4))
    assert not os.path.exists(hostile_folder / "PWNED")
    assert len(windows) == 1 and windows[0]["source"] == "a.mp4"
    assert not any(url.startswith("pipe:") for url in expand_urls(shards))


def test_entropy_code_of_a_glob_runs_no_command(hostile_folder):
    assert entropy_main(["code", "--input", "*.tar", "--output", "coded"]) == 0
    assert not os.path.exists(hostile_folder / "PWNED")
    assert len(os.listdir(hostile_folder / "coded")) == 1


def test_a_pipe_command_in_the_callers_own_string_still_runs(tmp_path):
    tokens = write_shard(tmp_path / "a.tar")
    windows = list(LatentDataset(f"pipe:cat {tmp_path / 'a.tar'}", seq_len=4))
    assert len(windows) == 1 and (windows[0]["tokens"].numpy() == tokens).all()



@pytest.fixture
def two_encodes(tmp_path):
    """encA/ and encB/, each one shard latents-000000.tar holding a segment of its own clip.mp4 (other tokens)."""
    for i, name in enumerate(["encA", "encB"]):
        os.makedirs(tmp_path / name)
        write_shard(tmp_path / name / "latents-000000.tar", sources=("clip.mp4",), offset=i)
    return tmp_path


@pytest.mark.parametrize("manifests", [False, True])
def test_the_commavq_export_refuses_two_segments_of_one_name(two_encodes, capsys, manifests):
    """Without manifests, when it meets the second; with encode.py's manifests, which list the videos, up front."""
    for name in ["encA", "encB"] if manifests else []:
        data = (two_encodes / name / "latents-000000.tar").read_bytes()
        (two_encodes / name / "manifest.json").write_text(json.dumps({
            "videos": {"clip.mp4": {"status": "ok", "shard": "latents-000000.tar"}},
            "shards": {"latents-000000.tar": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                              "samples": 1}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no manifest.json (without them)
        code = commavq_main(["--input", str(two_encodes / "encA"), str(two_encodes / "encB"),
                             "--output", str(two_encodes / "npy")])
    err = capsys.readouterr().err
    assert code == 2 and all(name in err for name in ["encA", "encB", "'clip.mp4'"])
    if manifests:
        assert not os.path.exists(two_encodes / "npy")  # refused before the folder was made


def test_the_commavq_export_refuses_its_input_folder_as_output(two_encodes, capsys):
    with pytest.warns(UserWarning, match="no manifest.json"):
        code = commavq_main(["--input", str(two_encodes / "encA"), "--output", str(two_encodes / "encA") + "/"])
    assert code == 2 and "input" in capsys.readouterr().err
    assert os.listdir(two_encodes / "encA") == ["latents-000000.tar"]


def test_entropy_code_refuses_two_inputs_of_one_name_and_its_input_as_output(two_encodes, capsys):
    a, b = str(two_encodes / "encA"), str(two_encodes / "encB")
    assert entropy_main(["code", "--input", a, b, "--output", str(two_encodes / "coded")]) == 2
    assert "latents-000000.tar" in capsys.readouterr().err and not os.path.exists(two_encodes / "coded")
    assert entropy_main(["code", "--input", a, "--output", a]) == 2
    assert "input" in capsys.readouterr().err


def test_entropy_code_writes_npy_inputs_as_readable_shards(tmp_path):
    tokens = np.arange(4 * 128).reshape(4, 8, 16) % 1024
    np.save(tmp_path / "seg.npy", tokens.astype(np.int16))  # commaVQ's own layout
    assert entropy_main(["code", "--input", str(tmp_path / "seg.npy"), "--output", str(tmp_path / "coded")]) == 0
    assert os.listdir(tmp_path / "coded") == ["seg.tar"]
    with pytest.warns(UserWarning, match="no manifest.json"):
        windows = list(LatentDataset(str(tmp_path / "coded"), seq_len=4))
    assert (windows[0]["tokens"].numpy() == tokens.reshape(4, 128)).all()


# ---- split values --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    """a.mp4 and b.mp4: 4 frames each at 128x256, no MANIFEST.tsv."""
    d = tmp_path_factory.mktemp("clips")
    for i, name in enumerate(["a.mp4", "b.mp4"]):
        write_video(str(d / name), driving_clip(i, 4, image_size=(128, 256)))
    return d


def copy_clips(src, dst, names: dict) -> None:
    """{new relative name: clip in ``src``} copied under ``dst``."""
    for new, old in names.items():
        os.makedirs(os.path.dirname(dst / new), exist_ok=True)
        shutil.copyfile(src / old, dst / new)


@pytest.mark.parametrize("split", ["test", "VAL", "val ", "holdout", "", "Train"])
def test_a_split_other_than_train_or_val_is_refused(tmp_path, two_clips, split):
    copy_clips(two_clips, tmp_path, {"a.mp4": "a.mp4", "b.mp4": "b.mp4"})
    (tmp_path / "MANIFEST.tsv").write_text(f"file\tsplit\na.mp4\ttrain\nb.mp4\t{split}\n")
    with pytest.raises(ValueError, match=f"MANIFEST.tsv.*b.mp4.*{re.escape(repr(split))}"):
        split_videos(list_videos(str(tmp_path)))
    with pytest.raises(SystemExit, match="split"):
        make_shards_main(["--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert not glob.glob(str(tmp_path / "out" / "*.tar"))


@pytest.mark.parametrize("header", ["file\tsplits", "name\tsplit"])
def test_a_manifest_without_file_and_split_columns_is_refused(tmp_path, two_clips, header):
    copy_clips(two_clips, tmp_path, {"a.mp4": "a.mp4"})
    (tmp_path / "MANIFEST.tsv").write_text(f"{header}\na.mp4\tval\n")
    with pytest.raises(ValueError, match="MANIFEST.tsv.*column"):
        split_videos(list_videos(str(tmp_path)))


@pytest.mark.parametrize("change", [["--image-size", "64", "128"], ["--stride", "2"]])
def test_make_shards_into_an_output_of_other_settings_is_refused(tmp_path, two_clips, change, capsys):
    out = str(tmp_path / "out")
    make_shards_main(["--input", str(two_clips), "--output", out])
    assert "wrote 8 frames" in capsys.readouterr().out
    before = sorted(os.listdir(out))
    with pytest.raises(SystemExit, match="settings"):
        make_shards_main(["--input", str(two_clips), "--output", out, *change])
    assert sorted(os.listdir(out)) == before
    make_shards_main(["--input", str(two_clips), "--output", out])  # the same settings resume: nothing to do
    assert "wrote 0 frames" in capsys.readouterr().out


# ---- one key for a video -------------------------------------------------------------------------------------
def frame_sources(out) -> dict:
    """{source: [frame indices]} over every frame shard in ``out``."""
    sources: dict = {}
    for shard in glob.glob(os.path.join(out, "*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".meta.json"):
                    meta = json.loads(tar.extractfile(member).read())
                    sources.setdefault(meta["source"], []).append(meta["frame"])
    return {s: sorted(f) for s, f in sources.items()}


@pytest.mark.parametrize("names", [["a/clip.mp4", "b/clip.mp4"], ["a b.mp4", "a_b.mp4"], ["x.mp4", "x.MP4"]])
def test_make_shards_keeps_every_frame_of_videos_with_similar_names(tmp_path, two_clips, names, capsys):
    copy_clips(two_clips, tmp_path / "in", dict(zip(names, ["a.mp4", "b.mp4"])))
    inputs = sorted({os.path.dirname(str(tmp_path / "in" / n)) for n in names})
    for folder in inputs:  # all in one split, so the split's prefix cannot tell their shards apart
        Path(folder, "MANIFEST.tsv").write_text("file\tsplit\n" + "".join(f"{os.path.basename(n)}\ttrain\n"
                                                                           for n in names))
    make_shards_main(["--input", *inputs, "--output", str(tmp_path / "out")])
    assert "wrote 8 frames from 2 videos" in capsys.readouterr().out
    assert frame_sources(tmp_path / "out") == {n: [0, 1, 2, 3] for n in names}
    make_shards_main(["--input", *inputs, "--output", str(tmp_path / "out")])  # a re-run finds both done
    assert "wrote 0 frames" in capsys.readouterr().out


def test_make_shards_refuses_a_video_that_changed_split(tmp_path, two_clips):
    copy_clips(two_clips, tmp_path / "in", {"a.mp4": "a.mp4", "b.mp4": "b.mp4"})
    (tmp_path / "in" / "MANIFEST.tsv").write_text("file\tsplit\na.mp4\ttrain\nb.mp4\tval\n")
    make_shards_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    (tmp_path / "in" / "MANIFEST.tsv").write_text("file\tsplit\na.mp4\tval\nb.mp4\tval\n")
    with pytest.raises(SystemExit, match="a.mp4.*train.*val"):  # its train frames would also be held out
        make_shards_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])


def test_make_shards_keeps_a_video_whose_name_is_not_utf8(tmp_path, two_clips, capsys):
    os.makedirs(tmp_path / "in")
    shutil.copyfile(two_clips / "a.mp4", os.path.join(os.fsencode(tmp_path / "in"), b"\xff-clip.mp4"))
    shutil.copyfile(two_clips / "b.mp4", tmp_path / "in" / "b.mp4")
    (tmp_path / "in" / "MANIFEST.tsv").write_text("file\tsplit\nb.mp4\ttrain\n")  # the other one by hash
    make_shards_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert "wrote 8 frames from 2 videos" in capsys.readouterr().out
    assert frame_sources(tmp_path / "out") == {"\udcff-clip.mp4": [0, 1, 2, 3], "b.mp4": [0, 1, 2, 3]}


def test_evaluate_video_reports_every_clip_of_one_file_name(tmp_path, two_clips):
    from compressor.tools import evaluate_video
    from tests.conftest import video_codec

    video_codec().save(tmp_path / "video.pt")
    copy_clips(two_clips, tmp_path / "in", {"a/clip.mp4": "a.mp4", "b/clip.mp4": "b.mp4"})
    inputs = [str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b")]
    out = tmp_path / "report"
    assert evaluate_video.main(["--checkpoint", str(tmp_path / "video.pt"), "--input", *inputs, "--split", "",
                                "--gop", "2", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["gops"]["2"]["clips"]) == ["a/clip.mp4", "b/clip.mp4"] and report["gops"]["2"]["frames"] == 8
    for gop in ["0", "-1"]:
        with pytest.raises(SystemExit):
            evaluate_video.main(["--checkpoint", str(tmp_path / "video.pt"), "--input", *inputs, "--split", "",
                                 "--gop", gop, "--output", str(out)])
