"""Old path of ``compressor.codec.encoders``, kept because configs and checkpoints name classes as
``compressor.encoders.CLASS``."""

from compressor.codec.encoders import *  # noqa: F401,F403
