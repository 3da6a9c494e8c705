"""compressor: dashcam frames -> 128 discrete tokens (224 bytes) -> frames.

Codec API::

    model = compressor.load("model.pt")
    tokens = model.encode(frames)        # uint8 (B, 3, 128, 256) -> int64 (B, 128)
    data = compressor.pack(tokens)       # 224 bytes per frame
    frames = model.decode(compressor.unpack(data, num_frames=len(tokens)))
"""

from compressor.codec.autoencoder import Autoencoder, load
from compressor.codec.packing import pack, unpack

__all__ = ["Autoencoder", "load", "pack", "unpack", "preprocess"]


def __getattr__(name: str):
    # PyAV is imported on first use of preprocess, so the model code (and the GPU benchmark) runs without it.
    if name == "preprocess":
        from compressor.data.video import preprocess

        return preprocess
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
