import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import torch
import webdataset as wds

from compressor import load, preprocess
from compressor.latents import read_segments
from compressor.codec.checkpoint import model_id
from compressor.latents.manifest import write_merged_manifest
from compressor.latents.pipeline import encode_videos
from compressor.latents.writer import WRITE_STEPS
from compressor.data.synthetic import driving_clip
from compressor.data.video import iter_frames
from tests.conftest import Killed, tiny_model, write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODE = [sys.executable, os.path.join(REPO, "encode.py")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "model.pt")
    tiny_model().save(path)
    return path


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory) -> str:
    """Three clips at 10 fps: 25, 12 and 7 frames, one of them in a subdirectory."""
    d = tmp_path_factory.mktemp("good")
    os.makedirs(d / "sub")
    write_video(str(d / "a.mp4"), driving_clip(1, 25, image_size=(180, 320)))
    write_video(str(d / "sub" / "b.mp4"), driving_clip(2, 12, image_size=(180, 320)))
    write_video(str(d / "c.mkv"), driving_clip(3, 7, image_size=(144, 256)), codec="libx265")
    return str(d)


def run_encode(inputs, output, checkpoint, *extra, check=True):
    cmd = [*ENCODE, "--checkpoint", checkpoint, "--input", *inputs, "--output", str(output), "--workers", "1",
           "--batch-size", "8", "--segment-seconds", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def read_all(output) -> dict:
    """{(source, segment): (tokens uint16 array, meta)} over every shard."""
    out = {}
    for shard in sorted(f for f in os.listdir(output) if f.endswith(".tar")):
        for seg in read_segments(os.path.join(output, shard)):
            key = (seg["meta"]["source"], seg["meta"]["segment"])
            assert key not in out, f"duplicate segment {key}"
            out[key] = (seg["tokens"], seg["meta"])
    return out


@pytest.mark.slow
def test_tokens_equal_the_codec_api_and_segments_split(tmp_path, checkpoint, good_videos):
    run_encode([good_videos], tmp_path, checkpoint)
    segments = read_all(tmp_path)
    # 10 fps x 1 s segments: a.mp4 (25 frames) -> 10 + 10 + 5; b -> 10 + 2; c -> 7.
    assert sorted((s, len(t)) for (s, _), (t, _) in segments.items()) == sorted(
        [("a.mp4", 10), ("a.mp4", 10), ("a.mp4", 5), ("sub/b.mp4", 10), ("sub/b.mp4", 2), ("c.mkv", 7)])
    model = load(checkpoint)
    frames = torch.stack([preprocess(f) for f in iter_frames(os.path.join(good_videos, "a.mp4"))])
    expected = model.encode(frames)
    got = torch.cat([segments[("a.mp4", i)][0] for i in range(3)])
    assert torch.equal(got, expected)
    meta = segments[("a.mp4", 1)][1]
    assert meta["first_frame"] == 10 and meta["frame_indices"] == list(range(10, 20))
    assert meta["fps"] == pytest.approx(10) and meta["original_size"] == [320, 180]
    assert meta["codebook_size"] == 15360 and meta["bytes_per_frame"] == 224 and len(meta["model_id"]) == 16
    assert meta["timestamps"][0] == pytest.approx(1.0)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {v["status"] for v in manifest["videos"].values()} == {"ok"}
    assert manifest["videos"]["a.mp4"]["frames"] == 25
    for name, shard in manifest["shards"].items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == shard["sha256"]


@pytest.mark.slow
def test_rerun_skips_finished_videos(tmp_path, checkpoint, good_videos):
    run_encode([good_videos], tmp_path, checkpoint)
    before = read_all(tmp_path)
    result = run_encode([good_videos], tmp_path, checkpoint)
    assert "0 frames from 0 videos" in result.stderr
    after = read_all(tmp_path)
    assert before.keys() == after.keys()


@pytest.mark.slow
def test_fps_resampling(tmp_path, checkpoint, good_videos):
    run_encode([os.path.join(good_videos, "a.mp4")], tmp_path, checkpoint, "--fps", "5", "--segment-seconds", "60")
    ((tokens, meta),) = read_all(tmp_path).values()
    assert len(tokens) == 13 and meta["frame_indices"][:3] == [0, 2, 4] and meta["fps"] == 5


def make_bad_inputs(d):
    os.makedirs(d, exist_ok=True)
    (d / "text.mp4").write_text("this is not a video")
    (d / "empty.mp4").write_bytes(b"")
    with av.open(str(d / "audio_only.mkv"), "w") as c:  # a container with no video stream
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    # A "faststart" mp4 cut in half: frames decode, then decoding fails.
    full = d / "full.tmp"
    frames = driving_clip(4, 60, image_size=(180, 320))
    with av.open(str(full), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10, options={"tune": "zerolatency"})  # frames out as packets come in
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f.permute(1, 2, 0).numpy().copy(), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = full.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) * 3 // 4])
    full.unlink()


@pytest.mark.slow
def test_bad_inputs_are_recorded_and_do_not_stop_the_job(tmp_path, checkpoint, good_videos):
    bad = tmp_path / "bad"
    make_bad_inputs(bad)
    out = tmp_path / "out"
    result = run_encode([good_videos, str(bad)], out, checkpoint)
    manifest = json.loads((out / "manifest.json").read_text())["videos"]
    by_name = {os.path.basename(k): v for k, v in manifest.items()}  # keys are relative to the common input root
    statuses = {name: v["status"] for name, v in by_name.items()}
    assert statuses["text.mp4"] == statuses["empty.mp4"] == statuses["audio_only.mkv"] == "failed"
    assert statuses["truncated.mp4"] == "truncated" and by_name["truncated.mp4"]["frames"] > 0
    assert by_name["audio_only.mkv"]["reason"] == "no video stream"
    assert statuses["a.mp4"] == "ok"
    assert "3 failed" in result.stdout and "1 truncated" in result.stdout
    kept = [len(t) for (s, _), (t, _) in read_all(out).items() if s.endswith("truncated.mp4")]
    assert sum(kept) == by_name["truncated.mp4"]["frames"]
    strict = run_encode([str(bad)], tmp_path / "strict", checkpoint, "--strict", check=False)
    assert strict.returncode != 0


def test_bad_checkpoint_or_input_fails_before_work(tmp_path, good_videos, checkpoint):
    junk = tmp_path / "junk.pt"
    junk.write_text("nope")
    r = run_encode([good_videos], tmp_path / "o1", str(junk), check=False)
    assert r.returncode != 0 and "cannot load checkpoint" in r.stderr
    r = run_encode([str(tmp_path / "missing")], tmp_path / "o2", checkpoint, check=False)
    assert r.returncode != 0 and "not found" in r.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_result(tmp_path, checkpoint):
    videos = tmp_path / "videos"
    os.makedirs(videos)
    for i in range(6):
        write_video(str(videos / f"v{i}.mp4"), driving_clip(10 + i, 30, image_size=(128, 256)))
    reference = tmp_path / "reference"
    run_encode([str(videos)], reference, checkpoint, "--maxcount", "1")
    out = tmp_path / "killed"
    cmd = [*ENCODE, "--checkpoint", checkpoint, "--input", str(videos), "--output", str(out), "--workers", "1",
           "--batch-size", "8", "--segment-seconds", "1", "--maxcount", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.isdir(out) and any(f.endswith(".tar") for f in os.listdir(out))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The kill must land mid-run: encode.py was still running, and it had finished some of the work, not all.
    assert proc.returncode == -signal.SIGKILL, f"encode.py ended by itself (exit code {proc.returncode})"
    done = [f for f in os.listdir(out) if f.endswith(".tar")]
    assert 1 <= len(done) < len([f for f in os.listdir(reference) if f.endswith(".tar")]), done
    run_encode([str(videos)], out, checkpoint, "--maxcount", "1")
    got, ref = read_all(out), read_all(reference)
    assert got.keys() == ref.keys()
    for key in ref:
        assert torch.equal(got[key][0], ref[key][0])
    frames = sorted((s, i) for (s, _), (_, m) in got.items() for i in m["frame_indices"])
    assert len(frames) == len(set(frames)) == 6 * 30


@pytest.mark.slow
def test_two_processes_with_torchrun(tmp_path, checkpoint, good_videos):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           os.path.join(REPO, "encode.py"), "--checkpoint", checkpoint, "--input", good_videos, "--output",
           str(tmp_path), "--workers", "1", "--batch-size", "8", "--segment-seconds", "1"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    single = tmp_path / "single"
    run_encode([good_videos], single, checkpoint)
    got, ref = read_all(tmp_path), read_all(single)
    assert got.keys() == ref.keys()
    for key in ref:
        assert torch.equal(got[key][0], ref[key][0])
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".tar"))
    assert {int(s[8:14]) % 2 for s in shards} == {0, 1}  # both ranks wrote their own shards
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["videos"]) == 3


@pytest.mark.slow
def test_decode_preview_side_by_side(tmp_path, checkpoint, good_videos):
    run_encode([good_videos], tmp_path / "lat", checkpoint)
    out = tmp_path / "preview.mp4"
    subprocess.run([sys.executable, "-m", "compressor.tools.preview", "--checkpoint", checkpoint, "--input",
                    str(tmp_path / "lat"), "--output", str(out), "--original-root", good_videos, "--source",
                    "a.mp4"], check=True, capture_output=True, cwd=REPO)
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 25 and (frames[0].width, frames[0].height) == (512, 128)


@pytest.mark.slow
def test_entropy_code_stores_a_coded_stream_that_decodes_to_the_tokens(tmp_path, checkpoint, good_videos):
    from compressor.entropy.coding import digit_radices
    from compressor.entropy.priors import TemporalPrior
    from compressor.entropy.stream import save_prior

    model = load(checkpoint)
    prior = TemporalPrior(model.codebook_size, digit_radices(model.codebook_size, model.quantizer.levels),
                          model.grid, model_id(model), dim=16, depth=1)
    save_prior(prior, tmp_path / "prior.pt")
    run_encode([good_videos], tmp_path / "out", checkpoint, "--entropy-code", "--prior", str(tmp_path / "prior.pt"))
    plain = read_all(tmp_path / "out")
    shards = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    coded = {(s["meta"]["source"], s["meta"]["segment"]): s for url in shards for s in read_segments(url, prior=prior)}
    assert coded.keys() == plain.keys() and len(coded) == 6
    for key, (tokens, meta) in plain.items():
        assert torch.equal(coded[key]["tokens"], tokens)
        assert meta["entropy_coded"]["prior_id"] == prior.prior_id() and meta["entropy_coded"]["bytes"] > 44
    # a prior of other weights, or none where one is needed, stops the job before any work
    other = TemporalPrior(model.codebook_size, [8, 8, 8, 6, 5], model.grid, "ffffffffffffffff", dim=16, depth=1)
    save_prior(other, tmp_path / "other.pt")
    r = run_encode([good_videos], tmp_path / "out2", checkpoint, "--entropy-code", "--prior",
                   str(tmp_path / "other.pt"), check=False)
    assert r.returncode != 0 and "is a prior for model ffffffffffffffff" in r.stderr
    # without --prior: the adaptive coder, whose segments decode with no prior file
    run_encode([good_videos], tmp_path / "out3", checkpoint, "--entropy-code")
    from compressor.entropy.stream import decode_segment, read_header

    for url in sorted((tmp_path / "out3").glob("*.tar")):
        for sample in wds.WebDataset(str(url), shardshuffle=False):
            meta = json.loads(sample["json"])
            assert read_header(sample["tokens.ctok"])["prior"] == "adaptive"
            assert torch.equal(decode_segment(sample["tokens.ctok"]),
                               plain[(meta["source"], meta["segment"])][0])


def encode_in_process(inputs: list[str], output, **kwargs) -> dict:
    """encode.py's work without a subprocess (no decode workers): the manifest it leaves, as a dict."""
    encode_videos(tiny_model(), inputs, str(output), segment_seconds=1, batch_size=8, num_workers=0, progress=False,
                  **kwargs)
    return write_merged_manifest(str(output), inputs)


def test_colliding_names_get_distinct_keys_that_plain_webdataset_reads(tmp_path):
    names = ["a.b.mp4", "a_b.mp4", "sub/x.mp4", "sub__x.mp4"]  # the old keys collided in pairs
    os.makedirs(tmp_path / "videos" / "sub")
    for i, name in enumerate(names):
        write_video(str(tmp_path / "videos" / name), driving_clip(20 + i, 4, image_size=(128, 256)))
    encode_in_process([str(tmp_path / "videos")], tmp_path / "out")
    segments = read_all(tmp_path / "out")
    assert sorted(source for source, _ in segments) == sorted(names)
    model = tiny_model()
    for (source, _), (tokens, _) in segments.items():
        frames = torch.stack([preprocess(f) for f in iter_frames(str(tmp_path / "videos" / source))])
        assert torch.equal(tokens, model.encode(frames)), source
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")), shardshuffle=False))
    assert len(samples) == 4 and all("." not in s["__key__"] for s in samples)
    assert sorted(json.loads(s["json"])["source"] for s in samples) == sorted(names)


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("three")
    for i in range(3):
        write_video(str(d / f"v{i}.mp4"), driving_clip(30 + i, 6, image_size=(128, 256)))
    return str(d)


def shard_digests(output) -> dict[str, str]:
    """Every shard file (finished or not) by name, with its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output.glob("latents-*")}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, three_videos) -> tuple[dict, dict]:
    """One shard per video, uninterrupted: (shard digests, manifest)."""
    out = tmp_path_factory.mktemp("clean")
    return encode_in_process([three_videos], out, maxcount=1), shard_digests(out)


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_kill_at_any_write_step_then_a_rerun_equals_a_clean_run(tmp_path, three_videos, clean_run, step):
    clean, digests = clean_run
    for occurrence in (1, 2):
        out = tmp_path / f"killed-{occurrence}"
        seen = []

        def kill(name: str) -> None:
            seen.append(name)
            if seen.count(step) == occurrence:
                raise Killed(f"{step} #{occurrence}")

        with pytest.raises(Killed):
            encode_in_process([three_videos], out, maxcount=1, step_hook=kill)
        resumed = encode_in_process([three_videos], out, maxcount=1)
        assert shard_digests(out) == digests, (step, occurrence)  # no orphan, no duplicate, no partial shard
        assert resumed["shards"] == clean["shards"] and resumed["videos"] == clean["videos"]


def test_frames_too_small_to_crop_are_a_failed_video_with_a_reason(tmp_path):
    os.makedirs(tmp_path / "videos")
    with av.open(str(tmp_path / "videos" / "thin.mkv"), "w") as c:  # 1 pixel wide: no 2:1 window fits
        s = c.add_stream("libx264rgb", rate=10)
        s.width, s.height, s.pix_fmt = 1, 64, "rgb24"
        for _ in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((64, 1, 3), 200, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    write_video(str(tmp_path / "videos" / "fine.mp4"), driving_clip(5, 3, image_size=(128, 256)))
    with pytest.raises(ValueError, match="too small"):
        preprocess(np.zeros((64, 1, 3), np.uint8))
    manifest = encode_in_process([str(tmp_path / "videos")], tmp_path / "out")["videos"]
    assert manifest["thin.mkv"]["status"] == "failed" and "too small" in manifest["thin.mkv"]["reason"]
    assert manifest["fine.mp4"]["status"] == "ok"
    assert {source for source, _ in read_all(tmp_path / "out")} == {"fine.mp4"}


def test_a_folder_of_another_models_tokens_is_refused(tmp_path, three_videos):
    out = tmp_path / "out"
    manifest = encode_in_process([three_videos], out, maxcount=1)
    assert manifest["model_id"] == model_id(tiny_model())
    before = shard_digests(out)
    other = tiny_model()
    with torch.no_grad():
        next(other.parameters()).add_(0.5)  # any change of weights is another model
    for legacy in (False, True):  # True: a folder written before manifests named their model
        if legacy:
            for path in out.glob("manifest*.json"):
                path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "model_id"}))
        with pytest.raises(ValueError, match=f"holds tokens of model {manifest['model_id']}"):
            encode_videos(other, [three_videos], str(out), segment_seconds=1, num_workers=0, progress=False)
        assert shard_digests(out) == before
    encode_in_process([three_videos], out, maxcount=1)  # the same model resumes as before
    assert shard_digests(out) == before


def test_encode_py_refuses_another_model_before_any_work(tmp_path, checkpoint, good_videos):
    run_encode([good_videos], tmp_path, checkpoint)
    other = load(checkpoint)
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    other.save(str(tmp_path / "other.pt"))
    r = run_encode([good_videos], tmp_path, str(tmp_path / "other.pt"), check=False)
    assert r.returncode != 0 and "holds tokens of model" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_unwritable_output_fails_before_any_work(tmp_path, checkpoint, good_videos):
    (tmp_path / "file").write_text("a file where the output directory's parent should be")
    r = run_encode([good_videos], tmp_path / "file" / "out", checkpoint, check=False)
    assert r.returncode != 0 and "not writable" in r.stderr and "Traceback" not in r.stderr, r.stderr
