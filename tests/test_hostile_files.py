"""Special files, sizes, nesting and arguments, generated here: a FIFO, a device or a file far larger than any real
one is refused by name before a byte is read, where the readers used to hang or grow memory without bound, and
deeply nested JSON or a nonsensical rate is a clear error, not a traceback or an endless loop.

Every read that used to hang runs in a forked process with a time and memory limit, so a regression fails the test
instead of hanging the suite or exhausting the machine.
"""

import json
import multiprocessing
import os
import resource

import numpy as np
import pytest
import webdataset as wds

from compressor.latents import DamagedShardError, LatentDataset, read_segments
from compressor.latents.manifest import read_manifest
from compressor.latents.samples import make_sample
from tests.test_hostile_names import write_shard


def outcome(fn, seconds: float = 15) -> str:
    """``fn()`` in a forked process with 1 GiB more address space than now: "ok", "hang", or the exception it
    raised, as "Type: message"."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def target():
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30),) * 2)
        try:
            fn()
            queue.put("ok")
        except BaseException as e:  # noqa: BLE001 (whatever it is, the test names it)
            queue.put(f"{type(e).__name__}: {e}")

    process = ctx.Process(target=target)
    process.start()
    process.join(seconds)
    if process.is_alive():
        process.kill()
        process.join()
        return "hang"
    return queue.get(timeout=5) if not queue.empty() else f"died with exit code {process.exitcode}"


def special(path, kind: str) -> None:
    """Make ``path`` a FIFO or a symlink to /dev/zero."""
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)


# ---- special files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("skip_damaged", [False, True])
def test_a_shard_that_is_a_special_file_is_refused_by_name(tmp_path, kind, skip_damaged):
    write_shard(tmp_path / "a.tar")
    special(tmp_path / "b.tar", kind)

    def read():
        with pytest.warns(UserWarning):
            windows = list(LatentDataset(str(tmp_path), seq_len=4, skip_damaged=skip_damaged))
        assert len(windows) == 1

    result = outcome(read)
    if skip_damaged:
        assert result == "ok"
    else:
        assert result.startswith("DamagedShardError") and "b.tar" in result and "not a regular file" in result


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("which", ["manifest.json", "seg.npy", "seg.json"])
def test_a_manifest_or_npy_that_is_a_special_file_is_refused_by_name(tmp_path, kind, which):
    if which != "seg.npy":
        np.save(tmp_path / "seg.npy", np.zeros((2, 8, 16), np.int16))
    special(tmp_path / which, kind)
    read = (lambda: read_manifest(str(tmp_path))) if which == "manifest.json" else (
        lambda: list(read_segments(str(tmp_path / "seg.npy"))))
    result = outcome(read)
    assert result.startswith("DamagedShardError") and which in result and "not a regular file" in result


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_video_or_split_manifest_that_is_a_special_file_is_refused_by_name(tmp_path, kind):
    from compressor.data.video import iter_frames, split_videos

    special(tmp_path / "clip.mp4", kind)
    assert "not a regular file" in outcome(lambda: list(iter_frames(str(tmp_path / "clip.mp4"))))
    special(tmp_path / "MANIFEST.tsv", kind)
    assert "not a regular file" in outcome(lambda: split_videos([str(tmp_path / "clip.mp4")]))


# ---- nesting -------------------------------------------------------------------------------------------------
DEEP = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_in_a_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_bytes(DEEP)
    with pytest.raises(DamagedShardError, match="manifest.json.*nested"):
        read_manifest(str(tmp_path))


def test_deeply_nested_json_in_a_sample_is_skipped_like_any_damaged_sample(tmp_path):
    tokens = np.zeros((4, 8), np.uint16)
    with wds.TarWriter(str(tmp_path / "a.tar"), mtime=0) as sink:
        sink.write({**make_sample(tokens, {"source": "a.mp4", "segment": 0}), "json": DEEP})
        sink.write(make_sample(tokens, {"source": "b.mp4", "segment": 0}))
    with pytest.warns(UserWarning):
        dataset = LatentDataset(str(tmp_path), seq_len=4, skip_damaged=True)
        assert [w["source"] for w in dataset] == ["b.mp4"]
    assert dataset.skipped_samples == 1


def test_deeply_nested_json_in_a_hub_config_is_a_clear_error(tmp_path):
    from compressor.codec.hub import folder_config

    (tmp_path / "config.json").write_bytes(DEEP)
    with pytest.raises(ValueError, match="config.json.*nested"):
        folder_config(tmp_path)


# ---- arguments -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--fps", "-1"], ["--fps", "nan"], ["--fps", "0"], ["--fps", "inf"],
                                  ["--segment-seconds", "inf"], ["--segment-seconds", "0"],
                                  ["--segment-seconds", "nan"], ["--batch-size", "0"], ["--maxcount", "0"]])
def test_encode_refuses_rates_and_counts_that_mean_nothing(args, capsys):
    from tests.test_hostile_latents import encode_script

    with pytest.raises(SystemExit) as e:
        encode_script()(["--checkpoint", "x.pt", "--input", "v", "--output", "o", *args])
    assert e.value.code == 2 and args[0] in capsys.readouterr().err
