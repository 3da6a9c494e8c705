"""Old path of ``compressor.training.callbacks``, kept because configs name ``compressor.callbacks.CLASS``."""

from compressor.training.callbacks import *  # noqa: F401,F403
