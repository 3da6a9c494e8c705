"""compressor: dashcam frames -> 128 discrete tokens (224 bytes) -> frames.

Codec API::

    model = compressor.load("model.pt")
    tokens = model.encode(frames)        # uint8 (B, 3, 128, 256) -> int64 (B, 128)
    data = compressor.pack(tokens)       # 224 bytes per frame
    frames = model.decode(compressor.unpack(data, num_frames=len(tokens)))

``compressor.load("video.pt")``, or a video codec's Hub folder, returns a ``VideoCodec`` (``compressor.codec.video``):
``encode_clip(frames)`` / ``decode_clip(tokens)`` code clips in groups of an intra frame and conditional frames.

The names are imported on first use, so ``import compressor.latents`` (a world-model trainer reading tokens) loads
neither the codec nor PyAV.
"""

__all__ = ["Autoencoder", "load", "pack", "unpack", "preprocess"]


def __getattr__(name: str):
    if name == "Autoencoder":
        from compressor.codec import autoencoder

        return autoencoder.Autoencoder
    if name == "load":  # a per-frame Autoencoder, or a VideoCodec for a video.pt or its folder: the file knows its mode
        from compressor.codec import video

        return video.load_codec
    if name in ("pack", "unpack"):
        from compressor.codec import packing

        return getattr(packing, name)
    if name == "preprocess":
        from compressor.data import video

        return video.preprocess
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
