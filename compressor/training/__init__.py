"""Training: the Lightning module, its losses, callbacks and FLOP accounting. Imports the codec and data, never
the latents or tools.

- ``module``: ``CompressorModule`` (``train.py`` builds it from YAML).
- ``losses``: reconstruction, perceptual and adversarial terms.
- ``callbacks``: model export, throughput/MFU, validation curves.
- ``perf``: FLOPs per training image and the matmul peak.
"""
