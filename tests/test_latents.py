import io
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from compressor.latents import LatentDataset
from compressor.latents import DamagedShardError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_latent_shards(directory, segments_per_shard=(3, 2, 4), frames=(10, 7, 12), seed=0):
    """Shards in encode.py's format. Token value = 100 * segment id + frame (unique, checkable)."""
    os.makedirs(directory, exist_ok=True)
    seg_id = 0
    for s, n in enumerate(segments_per_shard):
        with wds.TarWriter(os.path.join(directory, f"latents-{s:06d}.tar")) as tar:
            for _ in range(n):
                T = frames[seg_id % len(frames)]
                tokens = (100 * seg_id + np.arange(T))[:, None].repeat(128, 1).astype(np.uint16)
                tar.write({"__key__": f"seg{seg_id:04d}", "tokens.npy": tokens,
                           "json": json.dumps({"source": f"v{seg_id}.mp4", "segment": 0, "first_frame": 5,
                                               "frame_indices": list(range(5, 5 + T))}).encode()})
                seg_id += 1
    return seg_id


def window_ids(items):
    return sorted((int(w["tokens"][0, 0]), tuple(w["tokens"][:, 0].tolist())) for w in items)


def all_windows(directory, seq_len, stride):
    return window_ids(LatentDataset(str(directory), seq_len=seq_len, stride=stride))


def test_windows_stay_inside_segments_and_carry_metadata(tmp_path):
    n = write_latent_shards(tmp_path)
    items = list(LatentDataset(str(tmp_path), seq_len=4, stride=2))
    for w in items:
        assert w["tokens"].shape == (4, 128) and w["tokens"].dtype == torch.int64
        ids = w["tokens"][:, 0]
        assert (ids // 100 == ids[0] // 100).all()  # one segment per window
        assert torch.equal(ids % 100 + 5, w["frame_index"])  # frame indices from the metadata
        assert w["source"] == f"v{int(ids[0]) // 100}.mp4"
    frames = [10, 7, 12] * 3
    assert len(items) == sum(len(range(0, T - 4 + 1, 2)) for T in frames[:n])


def test_two_ranks_by_two_workers_see_every_window_exactly_once(tmp_path, monkeypatch):
    write_latent_shards(tmp_path)
    expected = all_windows(tmp_path, 3, 1)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = LatentDataset(str(tmp_path), seq_len=3, stride=1, shuffle=True, seed=7)
        seen += [w for batch in DataLoader(ds, batch_size=None, num_workers=2) for w in [batch]]
    assert window_ids(seen) == expected


def test_shuffle_is_seeded_and_changes_per_epoch(tmp_path):
    write_latent_shards(tmp_path)
    order = lambda ds: [tuple(w["tokens"][:, 0].tolist()) for w in ds]  # noqa: E731
    a = LatentDataset(str(tmp_path), seq_len=2, shuffle=True, seed=1)
    b = LatentDataset(str(tmp_path), seq_len=2, shuffle=True, seed=1)
    assert order(a) == order(b)
    b.set_epoch(1)
    assert order(a) != order(b) and sorted(order(a)) == sorted(order(b))


def test_epoch_length(tmp_path):
    write_latent_shards(tmp_path)
    assert len(list(LatentDataset(str(tmp_path), seq_len=2, epoch_length=5))) == 5


def test_pipe_urls(tmp_path):
    write_latent_shards(tmp_path)
    url = f"pipe:cat {tmp_path}/latents-000000.tar"
    local = window_ids(LatentDataset(str(tmp_path / "latents-000000.tar"), seq_len=3))
    assert window_ids(LatentDataset(url, seq_len=3)) == local and local


def test_reads_commavq_token_files(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 1024, (1200, 8, 16)).astype(np.int16)
    np.save(tmp_path / "segment.npy", tokens)
    items = list(LatentDataset(str(tmp_path), seq_len=20, stride=20))
    assert len(items) == 60
    assert torch.equal(items[1]["tokens"], torch.from_numpy(tokens[20:40].reshape(20, 128).astype(np.int64)))
    assert items[1]["frame_index"].tolist() == list(range(20, 40))


def test_damaged_shard_raises_or_is_skipped_and_counted(tmp_path):
    write_latent_shards(tmp_path)
    path = tmp_path / "latents-000001.tar"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DamagedShardError, match="latents-000001"):
        list(LatentDataset(str(tmp_path), seq_len=2))
    ds = LatentDataset(str(tmp_path), seq_len=2, skip_damaged=True)
    with pytest.warns(UserWarning, match="damaged"):
        items = list(ds)
    assert items and ds.damaged == [str(path)]


def _write_drifting_latents(folder, seed: int) -> None:
    """Latents where each frame repeats the previous one with 10% of tokens changed: context pays off."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    with wds.TarWriter(str(folder / "latents-000000.tar")) as tar:
        for s in range(8):
            frames = [rng.integers(0, 64, 128)]
            for _ in range(15):
                nxt = frames[-1].copy()
                change = rng.random(128) < 0.1
                nxt[change] = rng.integers(0, 64, change.sum())
                frames.append(nxt)
            tar.write({"__key__": f"s{s}", "tokens.npy": np.stack(frames).astype(np.uint16),
                       "json": json.dumps({"source": f"s{s}", "segment": 0}).encode()})


@pytest.mark.slow
def test_world_model_example_beats_the_unigram_baseline(tmp_path):
    _write_drifting_latents(tmp_path / "latents", 0)
    spec = importlib.util.spec_from_file_location("world_model", os.path.join(REPO, "examples", "world_model.py"))
    world_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(world_model)
    # Scored on its own training latents: 150 steps on 8 clips teach this small model those clips, so held-out
    # clips would test the model, not the example (tests/test_world_model.py tests the package).
    result = world_model.main(["--train", str(tmp_path / "latents"), "--val", str(tmp_path / "latents"),
                               "--steps", "150", "--output", str(tmp_path / "run")])
    # About 6 bits/token without context; with it, about 0.1 x 6 bits for the changed tokens plus their positions.
    assert result["val_bits_per_token"] < result["unigram_bits_per_token"] - 1, result
    assert result["val_tokens"] == 8 * 15 * 128  # 8 clips x 15 frames with a past x 128 tokens


def test_npz_renamed_npy_and_oversized_npy_headers_are_damaged_shards(tmp_path):
    """In a shard and as commaVQ files: never an AttributeError, MemoryError or a 128 GiB allocation."""
    tokens = np.zeros((4, 128), np.uint16)
    npz, huge = io.BytesIO(), io.BytesIO()
    np.savez(npz, tokens=tokens)
    np.lib.format.write_array_header_1_0(huge, {"descr": "<u2", "fortran_order": False, "shape": (1 << 29, 128)})
    for name, payload in {"npz": npz.getvalue(), "huge": huge.getvalue() + tokens.tobytes()}.items():
        shard = tmp_path / name / "latents-000000.tar"
        os.makedirs(shard.parent)
        with wds.TarWriter(str(shard)) as tar:
            for key, data in {"good": tokens, "bad": payload}.items():
                tar.write({"__key__": key, "tokens.npy": data,
                           "json": json.dumps({"source": key[0], "segment": 0}).encode()})
        with pytest.raises(DamagedShardError, match="latents-000000.tar.*bad"):
            list(LatentDataset(str(shard.parent), seq_len=1))
        ds = LatentDataset(str(shard.parent), seq_len=1, skip_damaged=True)
        with pytest.warns(UserWarning, match="damaged"):
            assert [w["source"] for w in ds] == ["g"] * 4
        assert ds.damaged == [str(shard)]
        commavq = tmp_path / name / "segment.npy"
        commavq.write_bytes(payload)
        with pytest.raises(DamagedShardError, match="segment.npy"):
            list(LatentDataset(str(commavq), seq_len=1))


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/latents-000000.tar", "s3://bucket/latents-000000.tar",
                                 "gs://bucket/latents-{000000..000003}.tar"])
def test_unsupported_url_schemes_are_refused_up_front(url):
    with pytest.raises(ValueError, match="unsupported URL scheme.*pipe:"):
        LatentDataset(url, seq_len=1)
