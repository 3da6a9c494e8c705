"""Old path of ``compressor.data.video`` (``preprocess``, ``read_frames``, ``list_videos``...), kept for scripts."""

from compressor.data.video import *  # noqa: F401,F403
