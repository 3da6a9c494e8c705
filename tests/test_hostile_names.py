"""Hostile file names and split values, generated here: a name never runs a command, and no input is dropped or
sent to the wrong split without a clear error.

A file name is data: a shard named ``pipe:touch PWNED #.tar`` that a glob or a folder listing finds is read as the
file it is (``pipe:`` is a command only in the caller's own string).
"""

import os

import numpy as np
import pytest
import webdataset as wds

from compressor.latents import LatentDataset, expand_urls
from compressor.latents.shards import make_sample
from compressor.tools.entropy import main as entropy_main

HOSTILE = "pipe:touch PWNED #.tar"
HOSTILE_DIR = "pipe:touch PWNED #"


def write_shard(path, sources=("a.mp4",), frames: int = 4, codebook: int = 64) -> np.ndarray:
    """A shard of one segment per source, tokens (frames, 8) below ``codebook``; returns the tokens."""
    tokens = (np.arange(frames * 8).reshape(frames, 8) % codebook).astype(np.uint16)
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
