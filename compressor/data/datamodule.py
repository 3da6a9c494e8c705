"""Frame data for training: videos decoded in DataLoader workers, webdataset frame shards, or procedural scenes.

``LatentDataset`` (token windows for world models) lives in ``compressor.latents`` and is re-exported here.

Every source yields uint8 frames (3, H, W) that went through ``compressor.preprocess``.
"""

from __future__ import annotations

import glob
import os
import random

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from compressor.data.frame_shards import SETTINGS, FrameShards, shard_settings
from compressor.data.synthetic import driving_scene
from compressor.utils import rank_world, worker
from compressor.data.video import iter_frames, list_videos, preprocess, split_videos


class VideoFrames(IterableDataset):
    """Frames sampled at random from whole videos, decoded with PyAV inside the DataLoader workers.

    Decoding is sequential (seeking costs more than decoding on these codecs), so randomness comes from
    shuffling the video order each epoch, keeping each frame with probability ``sample_rate``, and a shuffle
    buffer that mixes frames across videos.

    Args:
        videos: video files.
        image_size: (H, W) of model input.
        sample_rate: probability that a frame is kept; 1.0 with ``shuffle=False`` gives every frame in order.
        shuffle: randomise video order and frame choice (training) or not (validation).
        buffer_size: frames held for shuffling.
    """

    def __init__(self, videos: list[str], image_size: tuple[int, int] = (128, 256), sample_rate: float = 0.25,
                 shuffle: bool = True, buffer_size: int = 256):
        super().__init__()
        self.videos, self.image_size = list(videos), tuple(image_size)
        self.sample_rate, self.shuffle, self.buffer_size = sample_rate, shuffle, buffer_size

    def _my_videos(self) -> list[str]:
        (rank, world), (wid, nw) = rank_world(), worker()
        videos = self.videos[rank::world] if len(self.videos) >= world else self.videos
        return videos[wid::nw]

    def __iter__(self):
        # torch.initial_seed() differs per worker, and per epoch unless workers persist; the pass count covers that.
        self._passes = getattr(self, "_passes", 0) + 1
        rng = random.Random(f"{torch.initial_seed()}-{self._passes}")
        videos = self._my_videos()
        if self.shuffle:
            rng.shuffle(videos)
        buffer: list[torch.Tensor] = []
        for path in videos:
            for i, frame in enumerate(iter_frames(path)):
                if self.shuffle and rng.random() >= self.sample_rate:
                    continue
                if not self.shuffle and i % max(1, round(1 / self.sample_rate)):
                    continue
                x = preprocess(frame, self.image_size)
                if not self.shuffle:
                    yield x
                    continue
                if len(buffer) < self.buffer_size:
                    buffer.append(x)
                else:
                    j = rng.randrange(len(buffer))
                    yield buffer[j]
                    buffer[j] = x
        rng.shuffle(buffer)
        yield from buffer


class ProceduralFrames(Dataset):
    """Procedurally generated driving-like frames; item ``i`` is always the same frame.

    Args:
        length: number of frames.
        image_size: (H, W).
        seed_offset: first scene seed (keeps train and val scenes apart).
    """

    def __init__(self, length: int, image_size: tuple[int, int] = (128, 256), seed_offset: int = 0):
        self.length, self.image_size, self.seed_offset = length, tuple(image_size), seed_offset

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        seed = self.seed_offset + i // 8  # 8 frames per scene, 0.4 s apart: a little clip per scene
        return driving_scene(seed, t=0.4 * (i % 8), image_size=self.image_size)


def augment_frames(frames: torch.Tensor, min_scale: float = 0.6) -> torch.Tensor:
    """Random zoom-in crop at the frame's aspect ratio plus a random horizontal flip: uint8 (B, 3, H, W) -> same.

    A few training clips are otherwise memorised: the decoder learns to recall training scenes from the tokens
    instead of coding the content, which looks fine on training frames and fails on new ones.
    """
    B, _, H, W = frames.shape
    out = torch.empty_like(frames)
    for i in range(B):
        scale = float(torch.empty(()).uniform_(min_scale, 1.0))
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        top = int(torch.randint(0, H - h + 1, ()))
        left = int(torch.randint(0, W - w + 1, ()))
        crop = frames[i : i + 1, :, top : top + h, left : left + w]
        if (h, w) != (H, W):
            crop = torch.nn.functional.interpolate(crop.float(), size=(H, W), mode="bilinear", align_corners=False)
            crop = crop.round().clamp(0, 255).to(torch.uint8)
        out[i] = crop[0].flip(-1) if torch.rand(()) < 0.5 else crop[0]
    return out


def check_shard_size(shards: str, image_size: tuple[int, int]) -> None:
    """``ValueError`` when the frame size ``make_shards.json`` records for ``shards`` is not ``image_size``.

    Training takes any frame size (the token grid follows the input), so 128x256 shards under a 256x512 config would
    train silently at a quarter of the tokens while the evaluation scores 256x512 frames. Shards without the record
    (written before it) pass unchecked.
    """
    recorded = (shard_settings(shards) or {}).get("image_size")
    if recorded is not None and tuple(recorded) != tuple(image_size):
        raise ValueError(f"{shards} holds {recorded[0]}x{recorded[1]} frames ({SETTINGS}), but data.image_size "
                         f"is {image_size[0]}x{image_size[1]}; write shards at that size with "
                         f"compressor.tools.make_shards --image-size {image_size[0]} {image_size[1]}")


class FramesDataModule(pl.LightningDataModule):
    """Training frames from videos, frame shards, or (when neither is given) procedural scenes.

    Args:
        videos: directory, glob, file, or list of those. A ``MANIFEST.tsv`` beside the videos with a ``split``
            column decides train/val; otherwise whole videos are held out by a hash of their name.
        shards: directory with ``train-*.tar`` and ``val-*.tar`` frame shards from ``compressor.tools.make_shards``.
        image_size: (H, W) of model input.
        batch_size: frames per batch per device.
        num_workers: DataLoader workers per device.
        val_fraction: share of videos held out when there is no manifest.
        sample_rate: share of each training video's frames drawn per epoch.
        val_sample_rate: share of each validation video's frames (evenly spaced) used for validation.
        frames_per_epoch: epoch length of the procedural source, in frames per device. A shard epoch is one pass
            over every training frame, split exactly across ranks and workers (``FrameShards``).
        val_frames: number of procedural validation frames.
        augment: random zoom-in crops and horizontal flips on training batches (never on validation).
        min_crop_scale: smallest crop side as a fraction of the frame side.
        persistent_workers: keep DataLoader workers alive across epochs (they see the epoch through shared memory).
        seed: seed of the shard order and shuffle buffers (the same on every rank).
        interleave_shards: training shards only: each rank x worker merges the shards of its range at random before
            the shuffle buffer, instead of reading them one after another, so a batch holds frames of many clips
            (``FrameShards(interleave=True)``; the same frames per epoch). Off in the class (shards are read
            as written); ``configs/base.yaml`` turns it on (its comment has the measurements).
    """

    def __init__(
        self,
        videos: str | list[str] | None = None,
        shards: str | None = None,
        image_size: tuple[int, int] = (128, 256),
        batch_size: int = 16,
        num_workers: int = 1,
        val_fraction: float = 0.1,
        sample_rate: float = 0.25,
        val_sample_rate: float = 0.1,
        frames_per_epoch: int = 2048,
        val_frames: int = 64,
        augment: bool = False,
        min_crop_scale: float = 0.6,
        persistent_workers: bool = True,
        seed: int = 0,
        interleave_shards: bool = False,
    ):
        super().__init__()
        if videos is not None and shards is not None:
            raise ValueError("give either videos or shards, not both")
        self.save_hyperparameters()
        self.image_size = tuple(image_size)
        self.train_videos: list[str] = []
        self.val_videos: list[str] = []
        self.train_frames: FrameShards | None = None
        self._resume: dict | None = None  # data position from a checkpoint, applied at that epoch's start

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.videos is not None:
            self.train_videos, self.val_videos = split_videos(list_videos(hp.videos), hp.val_fraction)
            if not self.train_videos:
                raise ValueError(f"no training videos left after the split of {hp.videos!r}")
        elif hp.shards is not None:
            check_shard_size(hp.shards, self.image_size)
            self.train_shards = sorted(glob.glob(os.path.join(hp.shards, "train-*.tar")))
            self.val_shards = sorted(glob.glob(os.path.join(hp.shards, "val-*.tar")))
            if not self.train_shards:
                raise FileNotFoundError(f"no train-*.tar shards in {hp.shards}; write them with compressor.tools.make_shards")
            self.train_frames = FrameShards(self.train_shards, hp.batch_size, hp.num_workers, shuffle=True,
                                            seed=hp.seed, interleave=hp.interleave_shards)

    # ---- data position: saved in checkpoints so that a resumed run continues the epoch where it stopped ----
    def set_epoch(self, epoch: int) -> None:
        """Called at each training epoch's start (by ``CompressorModule``)."""
        if self.train_frames is None:
            return
        skip = self._resume["batches"] if self._resume and self._resume["epoch"] == epoch else 0
        self.train_frames.set_epoch(epoch, skip)
        self._resume = None

    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        # Batches of this epoch whose training step has run: checkpoints are written after the step.
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.trainer.current_epoch, "batches": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None
        # Lightning does not call on_train_epoch_start for the epoch it resumes into, so apply the position now.
        if self._resume and self.train_frames is not None:
            self.train_frames.set_epoch(self._resume["epoch"], self._resume["batches"])

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        # On the device, so GPU runs augment on the GPU; only while fitting, never for validation.
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            batch = augment_frames(batch, self.hparams.min_crop_scale)
        return batch

    def _loader(self, dataset, shuffle: bool = False, drop_last: bool | None = None) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=self.hparams.batch_size, num_workers=workers, shuffle=shuffle,
                          drop_last=shuffle if drop_last is None else drop_last,
                          persistent_workers=self.hparams.persistent_workers and workers > 0,
                          pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if hp.videos is not None:
            return self._loader(VideoFrames(self.train_videos, self.image_size, hp.sample_rate, shuffle=True))
        if hp.shards is not None:
            consumers = (self.trainer.world_size if self.trainer else 1) * self.train_frames.num_workers
            if self.train_frames.frames_per_consumer(consumers) == 0:
                raise ValueError(f"{sum(self.train_frames.counts)} training frames cannot fill one batch of "
                                 f"{hp.batch_size} for each of {consumers} ranks x workers; lower --data.batch_size "
                                 "or --data.num_workers")
            return self._loader(self.train_frames, drop_last=True)
        return self._loader(ProceduralFrames(hp.frames_per_epoch, self.image_size), shuffle=True)

    def train_probe(self, num_frames: int) -> torch.Tensor | None:
        """A fixed set of training frames, uint8 (N, 3, H, W), spread evenly over the training shards (or the first
        procedural scenes); the same frames at every call and in every run on the same shards. None for videos.

        Scored beside validation (``ValCurve``), they show the train-val gap: a large gap says data limits the model,
        train and val flattening together say capacity or schedule does.
        """
        hp = self.hparams
        if hp.shards is not None:
            if self.train_frames is None:
                self.setup("fit")
            total = sum(self.train_frames.counts)
            if total == 0:
                return None
            keep = {round(i * total / min(num_frames, total)) for i in range(min(num_frames, total))}
            source = FrameShards(self.train_frames.urls, batch_size=1, shuffle=False)
            frames = [f for i, f in enumerate(source._range_frames(list(range(len(source.urls))), 0, total))
                      if i in keep]
            return torch.stack(frames) if frames else None
        if hp.videos is None:
            data = ProceduralFrames(num_frames, self.image_size)
            return torch.stack([data[i] for i in range(num_frames)])
        return None

    def val_dataloader(self) -> DataLoader | list:
        hp = self.hparams
        if hp.videos is not None:
            if not self.val_videos:
                return []
            return self._loader(VideoFrames(self.val_videos, self.image_size, hp.val_sample_rate, shuffle=False))
        if hp.shards is not None:
            if not self.val_shards:
                return []
            return self._loader(FrameShards(self.val_shards, hp.batch_size, hp.num_workers, shuffle=False),
                                drop_last=True)
        return self._loader(ProceduralFrames(hp.val_frames, self.image_size, seed_offset=1_000_000))
