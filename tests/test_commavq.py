"""commaVQ's token layout both ways: its files read by LatentDataset, and our latents exported to it and back.

Fixtures are generated here in commaVQ's two layouts (its dataset's int16 (T, 8, 16) and its example's int64
(T, 128)); no commaVQ data is vendored.
"""

import json
import os

import numpy as np
import pytest
import torch

from compressor.latents import DamagedShardError, LatentDataset, read_segments
from compressor.latents.commavq import commavq_dtype
from compressor.tools.commavq import main
from compressor.latents.manifest import write_merged_manifest
from compressor.latents.pipeline import encode_videos
from compressor.data.synthetic import driving_clip
from tests.conftest import tiny_model, write_video


def frames_of(ds: LatentDataset) -> dict:
    """{(source, segment, frame index): tokens (N,)} from windows of one frame."""
    return {(w["source"], w["segment"], int(w["frame_index"][0])): w["tokens"][0] for w in ds}


@pytest.mark.parametrize("layout", ["dataset (T, 8, 16)", "example (T, 128)"])
@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<i8", "<u2", "<i4", "|u1"])
def test_reads_either_commavq_layout_in_any_integer_dtype(tmp_path, layout, dtype):
    rng = np.random.default_rng(0)
    high = min(1024, np.iinfo(np.dtype(dtype)).max + 1)
    tokens = rng.integers(0, high, (60, 128))
    tokens[0, :2] = 0, high - 1  # both ends of the range
    stored = tokens.reshape(60, 8, 16) if layout.startswith("dataset") else tokens
    np.save(tmp_path / "segment.npy", stored.astype(dtype))
    items = list(LatentDataset(str(tmp_path), seq_len=20, stride=20))
    assert len(items) == 3
    assert torch.equal(torch.cat([w["tokens"] for w in items]), torch.from_numpy(tokens))
    assert items[1]["tokens"].dtype == torch.int64 and items[1]["frame_index"].tolist() == list(range(20, 40))
    (seg,) = read_segments(str(tmp_path / "segment.npy"))
    assert seg["meta"]["codebook_size"] == 1024 and seg["meta"]["bits_per_token"] == 10


@pytest.mark.parametrize("tokens, error", [
    (np.full((4, 8, 16), 1024, np.int16), r"tokens in \[1024, 1024\], outside commaVQ's codebook .* of 1024 codes"),
    (np.full((4, 128), -1, np.int64), r"tokens in \[-1, -1\], outside commaVQ's codebook"),
    (np.full((4, 1), 2**63, np.uint64).repeat(128, 1), "outside commaVQ's codebook"),  # never wraps to a valid id
    (np.zeros((4, 8, 15), np.int16), r"expected tokens shaped \(T, 8, 16\) or \(T, 128\), got \(4, 8, 15\)"),
    (np.zeros((4, 127), np.int64), r"expected tokens shaped \(T, 8, 16\) or \(T, 128\)"),
    (np.zeros((4, 8, 16), np.float32), "dtype <f4"),
])
def test_wrong_values_shapes_and_dtypes_are_clear_errors(tmp_path, tokens, error):
    np.save(tmp_path / "bad.npy", tokens)
    with pytest.raises(DamagedShardError, match=error):
        list(LatentDataset(str(tmp_path / "bad.npy"), seq_len=1))


def test_commavq_dtype_is_the_narrowest_signed_type():
    assert [commavq_dtype(n) for n in (100, 128, 129, 1024, 15360, 32768, 32769)] == [
        np.dtype("i1"), np.dtype("i1"), np.dtype("<i2"), np.dtype("<i2"), np.dtype("<i2"), np.dtype("<i2"),
        np.dtype("<i4")]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> str:
    """encode.py's output for three generated clips (10 fps, 0.5 s segments: several segments per clip)."""
    d = tmp_path_factory.mktemp("commavq")
    os.makedirs(d / "videos" / "sub")
    for i, (name, frames) in enumerate({"a.mp4": 12, "sub/b.mp4": 7, "c.mp4": 3}.items()):
        write_video(str(d / "videos" / name), driving_clip(50 + i, frames, image_size=(180, 320)))
    encode_videos(tiny_model(), [str(d / "videos")], str(d / "latents"), segment_seconds=0.5, batch_size=8,
                  num_workers=0, progress=False, maxcount=2)
    write_merged_manifest(str(d / "latents"), [str(d / "videos")])
    return str(d / "latents")


def test_export_round_trips_through_the_commavq_layout(tmp_path, encoded, capsys):
    assert main(["--input", encoded, "--output", str(tmp_path / "npy")]) == 0
    # 0.5 s segments at 10 fps: a.mp4 (12 frames) -> 5 + 5 + 2, sub/b.mp4 (7) -> 5 + 2, c.mp4 (3) -> 3
    assert "6 segments, 22 frames" in capsys.readouterr().out
    names = sorted(os.listdir(tmp_path / "npy"))
    npys = [n for n in names if n.endswith(".npy")]
    assert len(npys) == 6 and names == sorted(npys + [n[:-4] + ".json" for n in npys] + ["manifest.json"])
    assert sorted(json.loads((tmp_path / "npy" / "manifest.json").read_text())["shards"]) == npys
    original = {}
    for url in sorted(f for f in os.listdir(encoded) if f.endswith(".tar")):
        for seg in read_segments(os.path.join(encoded, url)):
            original[(seg["meta"]["source"], seg["meta"]["segment"])] = seg["tokens"]
    for name in npys:  # commaVQ's layout, readable with nothing but numpy
        array = np.load(tmp_path / "npy" / name)
        meta = json.loads((tmp_path / "npy" / (name[:-4] + ".json")).read_text())
        assert array.dtype == np.int16 and array.shape[1:] == (8, 16)
        assert torch.equal(torch.from_numpy(array.reshape(len(array), 128).astype(np.int64)),
                           original[(meta["source"], meta["segment"])])
    back = frames_of(LatentDataset(str(tmp_path / "npy"), seq_len=1))
    assert len(back) == 22 and back.keys() == frames_of(LatentDataset(encoded, seq_len=1)).keys()
    assert all(torch.equal(back[k], v) for k, v in frames_of(LatentDataset(encoded, seq_len=1)).items())


def test_an_exported_file_that_no_longer_matches_its_json_is_refused(tmp_path, encoded):
    assert main(["--input", encoded, "--output", str(tmp_path)]) == 0
    path = sorted(tmp_path.glob("*.npy"))[0]
    array = np.load(path)
    array[0, 0, 0] = (array[0, 0, 0] + 1) % 1000  # still inside the codebook: only the checksum can tell
    np.save(path, array)
    with pytest.raises(DamagedShardError, match="checksum"):
        list(LatentDataset(str(path), seq_len=1))
    # without its json, a file of our 15360-code tokens is taken for commaVQ's, whose codebook they overflow
    np.save(path, np.full_like(array, 5000))
    os.remove(str(path)[:-4] + ".json")
    with pytest.raises(DamagedShardError, match="outside commaVQ's codebook"):
        list(LatentDataset(str(path), seq_len=1))
