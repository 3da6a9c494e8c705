"""Frames for training: video decoding and the one ``preprocess``, frame shards, the Lightning DataModule.

Import the module you need; this package imports nothing, so ``compressor.data.video`` (what ``encode.py`` uses)
does not load Lightning.

- ``video``: ``preprocess`` (decoded frame -> model input), PyAV reading, the by-video split.
- ``frame_shards``: ``FrameShards``, frames from webdataset shards split exactly over (rank x worker).
- ``synthetic``: procedural driving-like scenes for the offline demo.
- ``datamodule``: ``FramesDataModule`` and its datasets.

The frame shards are written by ``python -m compressor.tools.make_shards`` (``compressor-make-shards``).
"""
