"""Training: the Lightning module, its losses, callbacks and FLOP accounting. Imports the codec and data, never
the latents or tools.

- ``module``: ``CompressorModule`` (``train.py`` builds it from YAML); ``video``: the video-token modules.
- ``core``: what every module shares, once: the EMA and its calibration, AdamW's groups and schedule, the export.
- ``losses``: reconstruction, perceptual and adversarial terms.
- ``callbacks``: model export, throughput/MFU, validation curves.
- ``perf``: FLOPs per training image and the matmul peak.
"""
