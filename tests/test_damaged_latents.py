"""A damaged-input corpus for latent shards, generated here from a real encode.py shard.

Every case must end in one of three ways: a ``DamagedShardError`` that names the shard, a skip that is counted
(``skip_damaged=True``), or exactly the original tokens and metadata. Wrong tokens are never an outcome.
"""

import io
import json
import os
import tarfile
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import webdataset as wds

from compressor.latents.samples import seal_meta
from compressor.latents import DamagedShardError, LatentDataset
from compressor.codec.packing import tokens_crc32
from compressor.data.synthetic import driving_clip
from tests.conftest import write_video
from tests.test_encode import encode_in_process

SHARD = "latents-000000.tar"


@dataclass
class Original:
    data: bytes  # the shard's bytes
    manifest: str  # manifest.json
    windows: dict  # (source, segment, frame index) -> tokens (N,)
    members: list  # (name, header offset, data offset, size)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Original:
    """Two clips at 10 fps in 1-second segments: 12 frames -> 10 + 2, 7 frames -> 7; three samples, one shard."""
    videos, out = tmp_path_factory.mktemp("videos"), tmp_path_factory.mktemp("latents")
    write_video(str(videos / "a.mp4"), driving_clip(1, 12, image_size=(128, 256)))
    write_video(str(videos / "b.mp4"), driving_clip(2, 7, image_size=(128, 256)))
    encode_in_process([str(videos)], out)
    windows = {}
    for w in LatentDataset(str(out), seq_len=1):
        windows[(w["source"], w["segment"], int(w["frame_index"][0]))] = w["tokens"][0]
    assert len(windows) == 19
    data = (out / SHARD).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]
    return Original(data, (out / "manifest.json").read_text(), windows, members)


def verdict(directory, data: bytes, original: Original, manifest: bool) -> str:
    """Read a shard strictly and with skipping; check every window either reader yields; say what happened."""
    os.makedirs(directory)
    (directory / SHARD).write_bytes(data)
    if manifest:
        (directory / "manifest.json").write_text(original.manifest)

    def read(ds: LatentDataset) -> set:
        seen = set()
        for w in ds:
            key = (w["source"], w["segment"], int(w["frame_index"][0]))
            assert key in original.windows and key not in seen, f"a window that was never written: {key}"
            assert torch.equal(w["tokens"][0], original.windows[key]), f"wrong tokens at {key}"
            seen.add(key)
        return seen

    try:
        strict = read(LatentDataset(str(directory), seq_len=1))
    except DamagedShardError as e:
        assert SHARD in str(e)
        strict = None
    lenient = LatentDataset(str(directory), seq_len=1, skip_damaged=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skipped = read(lenient)
    if strict is not None:
        assert strict == skipped == set(original.windows) and not lenient.damaged, "a shard that silently lost data"
        return "exact"
    assert lenient.damaged == [str(directory / SHARD)], "damage skipped without being counted"
    return "error"


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def member(original: Original, suffix: str, index: int = 0) -> tuple:
    return [m for m in original.members if m[0].endswith(suffix)][index]


@pytest.mark.parametrize("manifest", [True, False])
def test_a_flipped_byte_in_the_tokens_is_caught_and_names_the_sample(tmp_path, original, manifest):
    name, _, data_offset, size = member(original, ".tokens.npy", 1)
    key = name.partition(".")[0]
    for i, (offset, mask) in enumerate([(data_offset + size - 7, 0x01), (data_offset + size - 1, 0xFF)]):
        damaged = flip(original.data, offset, mask)  # the second: a token above the codebook size
        os.makedirs(tmp_path / f"{i}")
        (tmp_path / f"{i}" / SHARD).write_bytes(damaged)
        if manifest:
            (tmp_path / f"{i}" / "manifest.json").write_text(original.manifest)
        with pytest.raises(DamagedShardError, match=key) as e:
            list(LatentDataset(str(tmp_path / f"{i}"), seq_len=1))
        assert SHARD in str(e.value)
        assert verdict(tmp_path / f"v{i}", damaged, original, manifest) == "error"


@pytest.mark.parametrize("manifest", [True, False])
def test_a_shard_that_ends_early_is_detected(tmp_path, original, manifest):
    header = member(original, ".json", 1)[1]  # the second sample's first member
    assert verdict(tmp_path / "header", flip(original.data, header + 3, 0x10), original, manifest) == "error"
    boundaries = sorted({offset for _, offset, _, _ in original.members})
    for cut in boundaries[1:]:  # exactly at a member boundary: tarfile alone sees a clean end
        assert verdict(tmp_path / f"cut{cut}", original.data[:cut], original, manifest) == "error", cut


@pytest.mark.parametrize("manifest", [True, False])
def test_byte_flips_at_many_offsets(tmp_path, original, manifest):
    offsets = {len(original.data) - 1, len(original.data) - 600}  # inside the end-of-archive blocks
    for _, header, data_offset, size in original.members:
        offsets |= {header, header + 100, header + 124, header + 148, header + 257, data_offset, data_offset + 9,
                    data_offset + 60, data_offset + size // 2, data_offset + size - 1, data_offset + size}
    outcomes = {o: verdict(tmp_path / str(o), flip(original.data, o), original, manifest) for o in sorted(offsets)}
    assert "error" in outcomes.values()
    if manifest:  # the shard's sha256 covers every byte
        assert set(outcomes.values()) == {"error"}


def test_every_truncation_boundary(tmp_path, original):
    _, _, data_offset, size = original.members[-1]
    complete = -(-(data_offset + size) // 512) * 512 + 1024  # the last member and both end-of-archive blocks
    for cut in range(0, len(original.data), 512):
        for manifest in (True, False):
            # Past the end-of-archive blocks only the record padding is lost, which the manifest's size notices.
            expected = "exact" if cut >= complete and not manifest else "error"
            assert verdict(tmp_path / f"{cut}-{manifest}", original.data[:cut], original, manifest) == expected, cut
    assert verdict(tmp_path / "odd", original.data[: complete - 700], original, False) == "error"


def read_samples(data: bytes) -> list[dict]:
    """A shard's samples as {"__key__": key, extension: bytes}, in order."""
    out: list[dict] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            if not out or out[-1]["__key__"] != key:
                out.append({"__key__": key})
            out[-1][ext] = tar.extractfile(m).read()
    return out


def write_shard(data_samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0) as tar:
        for s in data_samples:
            tar.write(s)
    return buf.getvalue()


def npy(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


def resealed(sample: dict, tokens: np.ndarray, **meta_changes) -> dict:
    """A sample whose json checksums agree with ``tokens``: damage that only the format checks can catch."""
    meta = {k: v for k, v in json.loads(sample["json"]).items() if k != "meta_crc32"}
    meta.update(tokens_crc32=tokens_crc32(tokens.astype(np.uint16)), **meta_changes)
    return {**sample, "tokens.npy": npy(tokens), "json": seal_meta(meta)}


def test_rebuilding_the_shard_unchanged_reads_exactly(tmp_path, original):
    assert verdict(tmp_path / "same", write_shard(read_samples(original.data)), original, False) == "exact"


def test_duplicate_keys_wrong_dtypes_shapes_ranges_pickles_and_oversized_arrays(tmp_path, original):
    base = read_samples(original.data)
    tokens = np.load(io.BytesIO(base[1]["tokens.npy"]))
    huge = io.BytesIO()  # a valid header claiming (2**29, 128) uint16 = 128 GiB, then the real 2.5 KB of data
    np.lib.format.write_array_header_1_0(huge, {"descr": "<u2", "fortran_order": False, "shape": (1 << 29, 128)})
    huge = huge.getvalue() + tokens.tobytes()
    npz = io.BytesIO()
    np.savez(npz, tokens=tokens)
    changed = {
        "duplicate key, contiguous": [base[0], base[1], base[1], base[2]],
        "duplicate key, apart": [base[0], base[1], base[2], base[1]],
        "int64 tokens": [base[0], {**base[1], "tokens.npy": npy(tokens.astype(np.int64))}, base[2]],
        "float32 tokens": [base[0], {**base[1], "tokens.npy": npy(tokens.astype(np.float32))}, base[2]],
        "big-endian tokens": [base[0], {**base[1], "tokens.npy": npy(tokens.astype(">u2"))}, base[2]],
        "uint8 tokens, resealed": [base[0], resealed(base[1], tokens.astype(np.uint8)), base[2]],
        "3-d tokens, resealed": [base[0], resealed(base[1], tokens.reshape(len(tokens), 8, 16)), base[2]],
        "a frame too many, resealed": [base[0], resealed(base[1], np.concatenate([tokens, tokens[:1]])), base[2]],
        "above the codebook, resealed": [base[0], resealed(base[1], tokens | np.uint16(0x8000)), base[2]],
        "pickled object array": [base[0], {**base[1], "tokens.npy": npy(tokens.astype(object), allow_pickle=True)},
                                 base[2]],
        "npz named npy": [base[0], {**base[1], "tokens.npy": npz.getvalue()}, base[2]],
        "header claims 128 GiB": [base[0], {**base[1], "tokens.npy": huge}, base[2]],
        "json not an object": [base[0], {**base[1], "json": b"[1, 2]"}, base[2]],
        "json num_frames a string": [base[0], {**base[1], "json": seal_meta(
            {**json.loads(base[1]["json"]), "num_frames": "10"})}, base[2]],
        "json edited, not resealed": [base[0], {**base[1], "json": base[1]["json"].replace(b'"segment": 1',
                                                                                          b'"segment": 7')}, base[2]],
        "no json": [base[0], {k: v for k, v in base[1].items() if k != "json"}, base[2]],
        "no tokens": [base[0], {k: v for k, v in base[1].items() if k != "tokens.npy"}, base[2]],
    }
    assert b'"segment": 1' in base[1]["json"]
    for name, data_samples in changed.items():
        assert verdict(tmp_path / name.replace(" ", "_"), write_shard(data_samples), original, False) == "error", name


def test_shards_the_manifest_does_not_list_or_lists_but_lack_are_refused(tmp_path, original):
    os.makedirs(tmp_path / "orphan")
    (tmp_path / "orphan" / SHARD).write_bytes(original.data)
    (tmp_path / "orphan" / "latents-000001.tar").write_bytes(original.data)  # a finished shard nobody recorded
    (tmp_path / "orphan" / "manifest.json").write_text(original.manifest)
    with pytest.raises(DamagedShardError, match="latents-000001.tar.*not listed"):
        list(LatentDataset(str(tmp_path / "orphan"), seq_len=1))
    with pytest.warns(UserWarning, match="not listed"):
        ds = LatentDataset(str(tmp_path / "orphan"), seq_len=1, skip_damaged=True)
    assert len(list(ds)) == len(original.windows) and ds.damaged == [str(tmp_path / "orphan" / "latents-000001.tar")]
    os.makedirs(tmp_path / "missing")
    (tmp_path / "missing" / "manifest.json").write_text(original.manifest)
    (tmp_path / "missing" / "latents-000009.tar").write_bytes(original.data)
    with pytest.raises(DamagedShardError, match=f"{SHARD}.*missing"):
        list(LatentDataset(str(tmp_path / "missing"), seq_len=1))
