"""Clips of consecutive frames from frame shards, for video tokens (``compressor.codec.video``).

``compressor.tools.make_shards`` keeps each video's frames in order, one video per shard group
(``{split}-{video}-{k:03d}.tar``), so a clip is ``clip_len`` frames in a row of one video. The frames are held in
memory as uint8 (about 100 KB a frame at 128x256: 0.5 GB for the 4,940 train frames of ../shared/dashcam); a
collection too large for that wants a streaming reader instead.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

_SHARD = re.compile(r"^(?P<video>.+)-\d{3}\.tar$")


def read_videos(urls: list[str]) -> dict[str, torch.Tensor]:
    """Frame shards -> {video: uint8 (T, 3, H, W)} with each video's frames in shard order."""
    parts: dict[str, list[np.ndarray]] = {}
    for url in sorted(urls):
        match = _SHARD.match(os.path.basename(url))
        video = match.group("video") if match else os.path.basename(url)
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(".frame.npy"):
                    parts.setdefault(video, []).append(np.load(io.BytesIO(tar.extractfile(member).read())))
    return {video: torch.from_numpy(np.stack(frames)) for video, frames in parts.items()}


class FrameClips(Dataset):
    """uint8 clips (clip_len, 3, H, W) of consecutive frames, every start position of every video.

    Args:
        videos: {video: uint8 (T, 3, H, W)}, as ``read_videos`` gives.
        clip_len: frames per clip; videos shorter than that give none.
        starts_every: distance between the first frames of successive clips (1: every position).
    """

    def __init__(self, videos: dict[str, torch.Tensor], clip_len: int, starts_every: int = 1):
        if clip_len < 1 or starts_every < 1:
            raise ValueError(f"clip_len and starts_every must be >= 1, got {clip_len}, {starts_every}")
        self.videos = list(videos.values())
        self.clip_len = clip_len
        self.index = [(v, s) for v, frames in enumerate(self.videos)
                      for s in range(0, len(frames) - clip_len + 1, starts_every)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        v, s = self.index[i]
        return self.videos[v][s : s + self.clip_len]


class ClipsDataModule(pl.LightningDataModule):
    """Training and validation clips from ``train-*.tar`` / ``val-*.tar`` frame shards.

    Args:
        shards: directory of frame shards from ``compressor.tools.make_shards`` (written with ``--stride 1``, so
            clips hold the video's own frame rate).
        image_size: (H, W) of the frames (must be what the shards hold).
        clip_len: frames per training clip: one reference frame coded by the intra model, then ``clip_len - 1``
            conditional frames.
        batch_size: clips per batch per device.
        num_workers: DataLoader workers per device.
        val_clips: validation clips, evenly spread over the val videos.
        flip: mirror whole training clips left-right at random (the same for every frame of a clip).
    """

    def __init__(self, shards: str | None = None, image_size: tuple[int, int] = (128, 256), clip_len: int = 3,
                 batch_size: int = 8, num_workers: int = 0, val_clips: int = 32, flip: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.image_size = tuple(image_size)
        self.train: FrameClips | None = None
        self.val: torch.utils.data.Subset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train is not None:
            return
        if hp.shards is None:
            raise ValueError("video training reads frame shards: pass --data.shards DIR (compressor.tools.make_shards)")
        train = sorted(glob.glob(os.path.join(hp.shards, "train-*.tar")))
        if not train:
            raise FileNotFoundError(f"no train-*.tar shards in {hp.shards}; write them with compressor.tools.make_shards")
        self.train = FrameClips(read_videos(train), hp.clip_len)
        frames = next(iter(self.train.videos))
        if tuple(frames.shape[-2:]) != self.image_size:
            raise ValueError(f"shards hold {tuple(frames.shape[-2:])} frames, image_size is {self.image_size}")
        val = sorted(glob.glob(os.path.join(hp.shards, "val-*.tar")))
        if val:
            clips = FrameClips(read_videos(val), hp.clip_len)
            picks = np.linspace(0, len(clips) - 1, min(hp.val_clips, len(clips))).round().astype(int)
            self.val = torch.utils.data.Subset(clips, sorted(set(picks.tolist())))

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """batch: uint8 (B, L, 3, H, W); whole clips are mirrored, never single frames."""
        if self.hparams.flip and self.trainer is not None and self.trainer.training:
            flip = torch.rand(len(batch), device=batch.device) < 0.5
            batch = torch.where(flip[:, None, None, None, None], batch.flip(-1), batch)
        return batch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        return DataLoader(self.val, batch_size=self.hparams.batch_size, num_workers=0)
