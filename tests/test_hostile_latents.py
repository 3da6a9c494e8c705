"""Latent folders under concurrency, diverged models, mixed folders, moved roots and full disks, generated here.

Every case ends in exact data or a clear error: never a lost, doubled or wrong video, and never tokens of two models
read as one vocabulary without the caller saying so.
"""

import errno
import hashlib
import importlib.util
import json
import os
import subprocess
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds

from compressor import load, preprocess
from compressor.data.synthetic import driving_clip
from compressor.data.video import iter_frames
from compressor.latents import DamagedShardError, LatentDataset, read_segments
from compressor.codec.checkpoint import model_id
from compressor.latents.manifest import write_merged_manifest
from compressor.latents.pipeline import encode_videos
from compressor.latents.writer import OutputLockedError, lock_output
from compressor.tools.commavq import main as export_main
from tests.conftest import tiny_model, write_video
from tests.test_encode import ENCODE, REPO, checkpoint, encode_in_process, read_all  # noqa: F401 (a fixture)


def encode_script():
    """encode.py's ``main``, run in this process (no subprocess start-up: fast, and monkeypatches apply)."""
    spec = importlib.util.spec_from_file_location("encode_script", os.path.join(REPO, "encode.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def encode_args(checkpoint, inputs, output, *extra) -> list[str]:
    return ["--checkpoint", checkpoint, "--input", *map(str, inputs), "--output", str(output), "--workers", "0",
            "--batch-size", "8", "--segment-seconds", "1", *extra]


def other_model():
    model = tiny_model()
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # any change of weights is another model
    return model


def expected_tokens(model, path) -> torch.Tensor:
    return model.encode(torch.stack([preprocess(f) for f in iter_frames(str(path))]))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """a.mp4, sub/b.mp4 and sub/c.mp4: 6, 12 and 4 frames at 10 fps."""
    d = tmp_path_factory.mktemp("videos")
    os.makedirs(d / "sub")
    for i, (name, frames) in enumerate({"a.mp4": 6, "sub/b.mp4": 12, "sub/c.mp4": 4}.items()):
        write_video(str(d / name), driving_clip(60 + i, frames, image_size=(128, 256)))
    return d


def frames_by_video(output) -> dict:
    """{source: int64 (T, N)} over every shard, each segment once (read_all refuses a duplicate)."""
    segments = read_all(output)
    return {s: torch.cat([segments[(s, i)][0] for i in sorted(i for t, i in segments if t == s)])
            for s in {s for s, _ in segments}}


# ---- one writer per folder ------------------------------------------------------------------------------------
def test_a_second_run_into_a_folder_being_written_is_refused_by_name(tmp_path, checkpoint, videos):
    os.makedirs(tmp_path / "out")
    held = lock_output(str(tmp_path / "out"))  # another run, as far as the kernel is concerned: a second open file
    with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
        lock_output(str(tmp_path / "out"))
    with pytest.raises(SystemExit) as e:
        encode_script()(encode_args(checkpoint, [videos], tmp_path / "out"))
    assert "is being written by another encode run" in str(e.value.code)
    assert f"host {os.uname().nodename}, pid {os.getpid()}" in str(e.value.code)
    assert sorted(os.listdir(tmp_path / "out")) == [".encode.lock"]  # nothing written, nothing deleted
    held.close()
    assert encode_script()(encode_args(checkpoint, [videos], tmp_path / "out")) == 0


@pytest.mark.slow
def test_two_encode_processes_into_one_folder_lose_nothing(tmp_path, checkpoint):
    os.makedirs(tmp_path / "videos")
    for i in range(8):
        write_video(str(tmp_path / "videos" / f"{'ab'[i % 2]}{i}.mp4"), driving_clip(70 + i, 20, image_size=(128, 256)))
    reference = tmp_path / "reference"
    subprocess.run([*ENCODE, *encode_args(checkpoint, [tmp_path / "videos"], reference, "--maxcount", "1")],
                   check=True, capture_output=True)
    out = tmp_path / "out"
    runs = [[*ENCODE, *encode_args(checkpoint, [tmp_path / "videos" / f"{x}*.mp4"], out, "--maxcount", "1")]
            for x in "ab"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in runs]
    for cmd, proc in zip(runs, procs):
        _, stderr = proc.communicate()
        if proc.returncode:  # refused while the other held the folder: clearly, and without touching it
            assert "is being written by another encode run" in stderr and "Traceback" not in stderr, stderr
            subprocess.run(cmd, check=True, capture_output=True)
    got, ref = read_all(out), read_all(reference)
    assert got.keys() == ref.keys() and len({s for s, _ in ref}) == 8
    for key in ref:
        assert torch.equal(got[key][0], ref[key][0]), key
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["videos"]) == 8 and {v["status"] for v in manifest["videos"].values()} == {"ok"}
    assert list(LatentDataset(str(out), seq_len=1))


# ---- tokens checked before they are stored ----------------------------------------------------------------------
def diverged_model():
    """Finite weights whose activations overflow to NaN: what load accepts and encode must still refuse."""
    model = tiny_model()
    with torch.no_grad():
        model.encoder.embed.weight.fill_(1e38)
    return model


def test_a_model_that_gives_invalid_tokens_fails_every_video_and_strict_exits_non_zero(tmp_path, videos):
    encode_videos(diverged_model(), [str(videos)], str(tmp_path / "out"), segment_seconds=1, num_workers=0,
                  progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.rank-0.json").read_text())
    assert {v["status"] for v in manifest["videos"].values()} == {"failed"}
    assert all("tokens outside [0, 15360)" in v["reason"] for v in manifest["videos"].values())
    assert not list((tmp_path / "out").glob("*.tar"))
    diverged_model().save(tmp_path / "diverged.pt")
    assert encode_script()(encode_args(str(tmp_path / "diverged.pt"), [videos], tmp_path / "strict", "--strict")) == 1


# ---- one video, one identity ----------------------------------------------------------------------------------
def test_a_resume_from_a_parent_folder_encodes_no_video_twice(tmp_path, videos):
    encode_in_process([str(videos / "sub")], tmp_path / "out")
    first = frames_by_video(tmp_path / "out")
    assert sorted(first) == ["b.mp4", "c.mp4"]
    encode_in_process([str(videos)], tmp_path / "out")  # the parent: sub/b.mp4 is the b.mp4 already done
    got = frames_by_video(tmp_path / "out")
    assert sorted(got) == ["../a.mp4", "b.mp4", "c.mp4"]  # keys stay relative to the first run's root
    model = tiny_model()
    for source, tokens in got.items():
        assert torch.equal(tokens, expected_tokens(model, videos / "sub" / source)), source
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["root"] == os.path.realpath(videos / "sub") and len(manifest["videos"]) == 3


def test_a_video_named_several_ways_is_encoded_once(tmp_path, videos):
    os.symlink(videos / "a.mp4", tmp_path / "link.mp4")
    inputs = [str(videos), str(videos) + "/", str(videos / "a.mp4"), str(videos / "sub" / ".." / "a.mp4"),
              str(tmp_path / "link.mp4")]
    encode_in_process(inputs, tmp_path / "out")
    assert sorted(frames_by_video(tmp_path / "out")) == ["a.mp4", "sub/b.mp4", "sub/c.mp4"]


def test_a_failed_video_is_retried_once_its_file_changed(tmp_path, videos):
    os.makedirs(tmp_path / "videos")
    write_video(str(tmp_path / "videos" / "good.mp4"), driving_clip(80, 4, image_size=(128, 256)))
    (tmp_path / "videos" / "late.mp4").write_bytes(b"still copying")
    manifest = encode_in_process([str(tmp_path / "videos")], tmp_path / "out")
    assert manifest["videos"]["late.mp4"]["status"] == "failed"
    summary = encode_videos(tiny_model(), [str(tmp_path / "videos")], str(tmp_path / "out"), segment_seconds=1,
                            num_workers=0, progress=False)
    assert summary["videos"] == 0  # unchanged: not retried
    os.remove(tmp_path / "videos" / "late.mp4")
    write_video(str(tmp_path / "videos" / "late.mp4"), driving_clip(81, 5, image_size=(128, 256)))
    manifest = encode_in_process([str(tmp_path / "videos")], tmp_path / "out")
    assert manifest["videos"]["late.mp4"]["status"] == "ok"
    got = frames_by_video(tmp_path / "out")
    assert torch.equal(got["late.mp4"], expected_tokens(tiny_model(), tmp_path / "videos" / "late.mp4"))


# ---- clear errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["shard", "manifest"])
def test_a_full_disk_is_a_clear_error_that_leaves_nothing_unrecorded(tmp_path, checkpoint, videos, monkeypatch,
                                                                     where):
    clean = tmp_path / "clean"
    encode_script()(encode_args(checkpoint, [videos], clean, "--maxcount", "1"))
    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second shard, or the second manifest write: after one shard was recorded
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    if where == "shard":
        real = wds.TarWriter.write
        monkeypatch.setattr(wds.TarWriter, "write", full)
    else:
        import compressor.latents.pipeline as pipeline

        real = pipeline.write_json
        monkeypatch.setattr(pipeline, "write_json", full)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        encode_script()(encode_args(checkpoint, [videos], out, "--maxcount", "1"))
    message = str(e.value.code)
    assert "no space left on the device writing" in message and "bytes free" in message, message
    assert ("latents-000001.tar.tmp" if where == "shard" else "manifest.rank-0.json") in message
    monkeypatch.undo()
    # what is on disk is only what the manifest records: one shard, read back exactly
    assert sorted(p.name for p in out.glob("latents-*")) == ["latents-000000.tar"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no manifest.json yet: the rank manifest is the truth
        windows = list(LatentDataset(str(out), seq_len=1))
    assert len(windows) == sum(len(tokens) for tokens, meta in read_all(clean).values() if meta["source"] == "a.mp4")
    assert encode_script()(encode_args(checkpoint, [videos], out, "--maxcount", "1")) == 0  # the resume completes
    digests = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.glob("latents-*")}  # noqa
    assert digests(out) == digests(clean)


def test_stray_files_in_the_output_folder_are_left_alone_and_named(tmp_path, videos):
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "latents-old.tar").write_bytes(b"an old export")
    (tmp_path / "out" / "latents-12.tar.bak").write_bytes(b"a backup")
    encode_in_process([str(videos)], tmp_path / "out")
    encode_in_process([str(videos)], tmp_path / "out")  # a resume too
    assert (tmp_path / "out" / "latents-old.tar").read_bytes() == b"an old export"
    shards = sorted((tmp_path / "out").glob("latents-[0-9]*.tar"))
    sources = {seg["meta"]["source"] for p in shards for seg in read_segments(str(p))}
    assert sorted(sources) == ["a.mp4", "sub/b.mp4", "sub/c.mp4"]
    with pytest.raises(DamagedShardError, match="latents-old.tar: not listed in the manifest"):
        LatentDataset(str(tmp_path / "out"), seq_len=1)


def test_an_edited_manifest_is_caught_while_a_rank_manifest_exists(tmp_path, videos):
    encode_in_process([str(videos)], tmp_path / "out")
    path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert (tmp_path / "out" / "manifest.rank-0.json").exists()
    name = next(iter(manifest["shards"]))
    manifest["shards"][name]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(DamagedShardError, match=f"disagree about shard {name}"):
        LatentDataset(str(tmp_path / "out"), seq_len=1)


# ---- reading: one model per dataset, each shard once, every listed shard there ------------------------------------
@pytest.fixture(scope="module")
def two_models(tmp_path_factory, videos) -> tuple[str, str]:
    """Folders of the same videos encoded by two models."""
    d = tmp_path_factory.mktemp("two")
    encode_in_process([str(videos)], d / "a")
    encode_videos(other_model(), [str(videos)], str(d / "b"), segment_seconds=1, batch_size=8, num_workers=0,
                  progress=False)
    write_merged_manifest(str(d / "b"), [str(videos)])
    return str(d / "a"), str(d / "b")


def test_folders_of_two_models_are_refused_unless_both_are_accepted(two_models):
    a, b = two_models
    ids = [model_id(tiny_model()), model_id(other_model())]
    with pytest.raises(ValueError, match="different vocabularies.*model_ids"):
        LatentDataset([a, b], seq_len=1)
    with pytest.raises(ValueError, match="accepted model_ids"):
        LatentDataset([a, b], seq_len=1, model_ids=ids[:1])
    items = list(LatentDataset([a, b], seq_len=1, model_ids=ids))
    assert {w["model_id"] for w in items} == set(ids)
    assert {w["model_id"] for w in LatentDataset(a, seq_len=1)} == {ids[0]}
    # shards named one by one, without their folders' manifests: caught when the second model's first segment is read
    for d in (a, b):
        os.makedirs(d + "-bare")
        os.link(os.path.join(d, "latents-000000.tar"), os.path.join(d + "-bare", "latents-000000.tar"))
    shards = [os.path.join(d + "-bare", "latents-000000.tar") for d in (a, b)]
    with pytest.warns(UserWarning, match="no manifest.json"):
        ds = LatentDataset(shards, seq_len=1)
    with pytest.raises(ValueError, match="different vocabularies"):
        list(ds)


def test_a_shard_named_twice_is_read_once(two_models):
    a, _ = two_models
    once = len(list(LatentDataset(a, seq_len=1)))
    for names in ([a, a + "/"], [a, os.path.join(a, "latents-000000.tar")], [a, os.path.join(a, "*.tar")]):
        assert len(list(LatentDataset(names, seq_len=1))) == once, names


def test_a_listed_shard_missing_is_an_error_however_shards_are_named(tmp_path, videos):
    encode_in_process([str(videos)], tmp_path / "out", maxcount=1)
    os.remove(tmp_path / "out" / "latents-000001.tar")
    for shards in (str(tmp_path / "out" / "latents-*.tar"), [str(tmp_path / "out" / "latents-000000.tar")]):
        with pytest.raises(DamagedShardError, match="latents-000001.tar: listed in the manifest.*but missing"):
            LatentDataset(shards, seq_len=1)
        with pytest.warns(UserWarning, match="missing"):
            ds = LatentDataset(shards, seq_len=1, skip_damaged=True)
        assert ds.damaged == [str(tmp_path / "out" / "latents-000001.tar")]
    # without a manifest nothing can be checked, and the reader says so, once
    for name in ("manifest.json", "manifest.rank-0.json"):
        os.remove(tmp_path / "out" / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(LatentDataset(str(tmp_path / "out" / "latents-*.tar"), seq_len=1))
    assert [str(w.message) for w in caught if "manifest" in str(w.message)] == [
        f"no manifest.json in {tmp_path / 'out'}: a missing or extra shard there cannot be detected (encode.py and "
        "the commaVQ export write one)"]


def test_a_glob_that_matches_folders_is_a_clear_error(tmp_path, two_models):
    with pytest.raises(ValueError, match="matches the folder .*name the folder"):
        LatentDataset(os.path.join(os.path.dirname(two_models[0]), "*"), seq_len=1)


def test_the_commavq_export_keeps_one_model_per_folder_and_notices_deleted_files(tmp_path, two_models):
    a, b = two_models
    assert export_main(["--input", a, "--output", str(tmp_path / "npy")]) == 0
    assert export_main(["--input", a, "--output", str(tmp_path / "npy")]) == 0  # the same model again: fine
    assert export_main(["--input", b, "--output", str(tmp_path / "npy")]) == 2  # another model's: refused
    assert {w["model_id"] for w in LatentDataset(str(tmp_path / "npy"), seq_len=1)} == {model_id(tiny_model())}
    os.makedirs(tmp_path / "commavq")
    np.save(tmp_path / "commavq" / "segment.npy", np.zeros((4, 8, 16), np.int16))  # commaVQ's own tokens
    assert export_main(["--input", a, "--output", str(tmp_path / "commavq")]) == 2
    npys = sorted((tmp_path / "npy").glob("*.npy"))
    os.remove(npys[0])  # its json stays
    with pytest.raises(DamagedShardError, match=f"{npys[0].name}.*missing"):
        LatentDataset(str(tmp_path / "npy"), seq_len=1)
    os.remove(str(npys[0])[:-4] + ".json")  # both gone: the manifest still lists it
    with pytest.raises(DamagedShardError, match=f"{npys[0].name}: listed in the manifest.*but missing"):
        LatentDataset(str(tmp_path / "npy" / "*.npy"), seq_len=1)
