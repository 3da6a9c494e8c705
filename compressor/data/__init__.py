"""Frames for training: video decoding and the one ``preprocess``, frame shards, the Lightning DataModule.

- ``video``: ``preprocess`` (decoded frame -> model input), PyAV reading, the by-video split.
- ``frame_shards``: ``FrameShards``, frames from webdataset shards split exactly over (rank x worker).
- ``make_shards``: ``python -m compressor.data.make_shards`` writes those shards from videos.
- ``synthetic``: procedural driving-like scenes for the offline demo.
- ``datamodule``: ``FramesDataModule`` and its datasets.
"""

from compressor.data.datamodule import FramesDataModule, ProceduralFrames, VideoFrames, augment_frames

__all__ = ["FramesDataModule", "ProceduralFrames", "VideoFrames", "augment_frames"]


def __getattr__(name: str):
    # compressor.data.LatentDataset was the world-model loader's old home; it lives in compressor.latents now.
    # Imported on use, so training data never imports the latents package.
    if name == "LatentDataset":
        from compressor.latents import LatentDataset

        return LatentDataset
    raise AttributeError(f"module 'compressor.data' has no attribute {name!r}")
