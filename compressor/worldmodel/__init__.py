"""A reference world model over token latents: does a model learn from our tokens, and how well?

- ``model``: ``WorldModel``, a causal GPT over frames of tokens (commaVQ-style raster order), with a full-softmax or
  a factorised FSQ-digit head.
- ``data``: segments read with ``LatentDataset`` (our shards or commaVQ-layout ``.npy``), windows, held-out videos.
- ``module``: the LightningModule, ``train`` (early stopping) and the ``world_model.pt`` checkpoint.
- ``score``: bits/token against unigram, copy-previous, lzma and the adaptive coder; decoded rollouts in pixels.
- ``generate``: sampled futures as PNG strips and mp4s.
- ``cli``: ``compressor-world-model`` (``python -m compressor.worldmodel``): train, score, generate, probe.

Imports point one way: this package uses codec, latents, entropy and training utilities; none of them imports it.
"""

from compressor.worldmodel.model import WorldModel, WorldModelConfig

__all__ = ["WorldModel", "WorldModelConfig"]
