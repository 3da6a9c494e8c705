"""Old path of ``compressor.codec.decoders``, kept because configs and checkpoints name classes as
``compressor.decoders.CLASS``."""

from compressor.codec.decoders import *  # noqa: F401,F403
