"""Old path of ``compressor.codec.quantizers``, kept because configs and checkpoints name classes as
``compressor.quantizers.CLASS``."""

from compressor.codec.quantizers import *  # noqa: F401,F403
