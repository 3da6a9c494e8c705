"""Tools built on the library; nothing in the library imports them. Each is ``python -m compressor.tools.NAME``.

- ``evaluate``: the codec against JPEG/WebP/AVIF, HEVC and a learned anchor on the same frames.
- ``baselines``: classical codecs at a byte budget. ``learned_baseline``: trains the compressai anchor.
- ``bench``, ``bench_train``, ``bench_encode``: speed of the designs, of training steps and of ``encode.py``.
- ``figures``: plots for the reports. ``experiments``: budgeted quality experiments and their table.
"""
