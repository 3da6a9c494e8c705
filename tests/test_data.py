import glob
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from compressor.data.datamodule import FramesDataModule, ProceduralFrames
from compressor.data.video import read_frames


def test_procedural_frames_are_deterministic_and_driving_sized():
    ds = ProceduralFrames(16)
    assert ds[3].shape == (3, 128, 256) and ds[3].dtype == torch.uint8
    assert torch.equal(ds[3], ProceduralFrames(16)[3])
    assert not torch.equal(ds[0], ds[8])  # different scenes


def test_video_datamodule_batches_and_disjoint_split(video_dir):
    dm = FramesDataModule(videos=video_dir, batch_size=4, num_workers=1, val_fraction=0.4, sample_rate=1.0,
                          val_sample_rate=1.0)
    dm.setup("fit")
    assert dm.val_videos and not set(dm.train_videos) & set(dm.val_videos)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 128, 256) and batch.dtype == torch.uint8
    val_frames = torch.cat(list(dm.val_dataloader()))
    assert len(val_frames) == 12 * len(dm.val_videos)  # every frame of each held-out video, in order
    expected = torch.cat([read_frames(v) for v in dm.val_videos])
    assert torch.equal(val_frames, expected)


def test_training_frames_follow_the_seed(video_dir):
    def first_epoch(seed: int) -> torch.Tensor:
        # A fresh DataModule each time: only the seed differs, not the number of passes already made.
        dm = FramesDataModule(videos=video_dir, batch_size=4, num_workers=0, val_fraction=0.4, sample_rate=0.5)
        dm.setup("fit")
        torch.manual_seed(seed)
        return torch.cat(list(dm.train_dataloader()))

    a, again, b = first_epoch(1), first_epoch(1), first_epoch(2)
    assert torch.equal(a, again)  # the same seed draws the same frames
    assert not (len(a) == len(b) and torch.equal(a, b))  # another seed draws others


def test_training_frames_change_each_epoch(video_dir):
    dm = FramesDataModule(videos=video_dir, batch_size=4, num_workers=0, val_fraction=0.4, sample_rate=0.5)
    dm.setup("fit")
    torch.manual_seed(1)
    loader = dm.train_dataloader()
    a = torch.cat(list(loader))
    b = torch.cat(list(loader))  # the same loader and seed, a second pass: new frames
    assert not (len(a) == len(b) and torch.equal(a, b))


@pytest.mark.slow
def test_make_shards_round_trip_and_resume(tmp_path, video_dir):
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "compressor.tools.make_shards", "--input", video_dir, "--output", str(out),
           "--val-fraction", "0.4", "--maxcount", "5"]
    subprocess.run(cmd, check=True, capture_output=True)
    shards = sorted(glob.glob(str(out / "*.tar")))
    assert shards and not glob.glob(str(out / "*.tmp"))
    # Each shard holds the exact preprocessed frames of one video.
    with tarfile.open(shards[0]) as tar:
        names = sorted(n for n in tar.getnames() if n.endswith(".frame.npy"))
        first = np.load(io.BytesIO(tar.extractfile(names[0]).read()))
        meta = json.loads(tar.extractfile(names[0].replace(".frame.npy", ".meta.json")).read())
    source = os.path.join(video_dir, meta["source"])  # its path relative to the input folder
    assert torch.equal(torch.from_numpy(first), read_frames(source)[0])
    # A re-run skips finished videos and leaves the shards untouched.
    mtimes = [os.path.getmtime(s) for s in shards]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "wrote 0 frames" in result.stdout
    assert mtimes == [os.path.getmtime(s) for s in shards]

    dm = FramesDataModule(shards=str(out), batch_size=4, num_workers=1)
    dm.setup("fit")
    batches = list(dm.train_dataloader())  # an epoch is every training frame once
    train_frames = sum(dm.train_frames.counts)
    assert train_frames % 12 == 0 and train_frames >= 24  # whole 12-frame videos
    assert len(batches) == train_frames // 4 and batches[0].shape == (4, 3, 128, 256) and batches[0].dtype == torch.uint8
    assert len({b.numpy().tobytes() for b in torch.cat(batches)}) == train_frames // 4 * 4
    val = torch.cat(list(dm.val_dataloader()))
    assert len(val) == 12 * len(dm.val_shards and {os.path.basename(s).rsplit("-", 1)[0] for s in dm.val_shards})


def test_augment_keeps_shape_dtype_and_content_range():
    from compressor.data.datamodule import augment_frames

    torch.manual_seed(0)
    frames = torch.zeros(8, 3, 128, 256, dtype=torch.uint8)
    frames[:, :, :, :128] = 200  # left half bright
    out = augment_frames(frames, min_scale=0.6)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    left_bright = (out[:, 0, 64, 0] > 100).tolist()
    assert True in left_bright and False in left_bright  # some frames were flipped
    assert torch.equal(augment_frames(frames, min_scale=1.0).sum(), frames.sum())  # flips only at scale 1


def test_shards_of_another_frame_size_are_refused(tmp_path):
    # Training takes any frame size, so 128x256 shards under a 256x512 config would train silently on a quarter of
    # the tokens (and the FLOPs budget would count 4x too many images); make_shards.json records the size.
    (tmp_path / "make_shards.json").write_text(json.dumps({"image_size": [128, 256], "stride": 1, "root": "x"}))
    with pytest.raises(ValueError, match="holds 128x256 frames .* data.image_size is 256x512"):
        FramesDataModule(shards=str(tmp_path), image_size=(256, 512)).setup("fit")
    with pytest.raises(FileNotFoundError, match="no train"):  # the size matches: on to the (missing) shards
        FramesDataModule(shards=str(tmp_path), image_size=(128, 256)).setup("fit")
