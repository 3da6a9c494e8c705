"""One clip API for every codec: a per-frame model is a video codec whose groups are one frame long.

``VideoCodec`` (``compressor.codec.video``) codes a clip in groups of an intra frame and conditional frames:
``encode_clip(frames) -> (tokens of each frame, the reconstruction)``, ``decode_clip(tokens) -> frames``, plus what
the latent pipeline, the cards, preview and evaluation read about it: ``image_size``, ``grid``, ``num_tokens``,
``codebook_size``, ``gop``, ``frame_formats()``, ``hub_config()``. ``FrameCodec`` gives a per-frame ``Autoencoder``
the same API with groups of one (every frame intra), so those callers handle clips only. ``clip_codec`` is the one
place that tells the two kinds apart.

What only a per-frame model has is a capability that callers check for, never a kind of codec:

- ``bytes_per_frame`` / ``bits_per_token``: every frame has one size (a video codec's differ by frame type, and
  ``frame_formats()`` gives each);
- ``supports_search``: encode-time token search (``Autoencoder.search_tokens``), ``search_steps=`` of
  ``encode_tokens`` and ``encode_clip``;
- ``encode_tokens``: the tokens without the reconstruction (each frame is coded alone, so nothing needs it);
  ``clip_tokens`` uses it where it exists.

Which frames of a clip are intra is ``compressor.codec.packing.frame_types(len(clip), codec.gop)``, and what a frame
costs is its packed size at its type's bits (``transmit``): every encoder, evaluator and export check reads both from
there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compressor.codec.autoencoder import Autoencoder
from compressor.codec.packing import frame_types, pack, unpack
from compressor.utils import batched


class FrameCodec:
    """A per-frame ``Autoencoder`` as a clip codec: groups of one frame, each coded alone (an intra frame, ``I``).

    Its weights, device and mode are the model's (``state_dict``, ``to``, ``eval``), so ``model_id`` and every
    file see the model itself. Frames and tokens go through the model ``batch_size`` at a time.
    """

    gop = 1
    supports_search = True

    def __init__(self, model: Autoencoder, batch_size: int = 32):
        self.model, self.batch_size = model, batch_size

    # ---- what a VideoCodec says about itself ----------------------------------------------------------------------
    @property
    def intra(self) -> Autoencoder:
        """The model of intra frames: here, of every frame."""
        return self.model

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.model.grid)

    @property
    def num_tokens(self) -> int:
        return self.model.num_tokens

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @property
    def bits_per_token(self) -> int:
        return self.model.bits_per_token

    @property
    def bytes_per_frame(self) -> int:
        return self.model.bytes_per_frame

    def frame_formats(self) -> dict[str, dict]:
        """The one frame type, ``I``: tokens, their grid, codebook, bits and bytes (as ``VideoCodec``'s ``I``)."""
        gh, gw = self.grid
        return {"I": {"num_tokens": self.num_tokens, "token_layout": f"{gh}x{gw} row-major",
                      "codebook_size": self.codebook_size, "bits_per_token": self.bits_per_token,
                      "bytes_per_frame": self.bytes_per_frame}}

    def hub_config(self) -> dict:
        return self.model.hub_config()

    def parts(self) -> dict[str, nn.Module]:
        """The networks whose parameters a report counts."""
        return {"encoder": self.model.encoder, "decoder": self.model.decoder}

    # ---- the clip API ----------------------------------------------------------------------------------------
    def encode_tokens(self, frames: Tensor, search_steps: int = 0) -> Tensor:
        """frames: uint8 (T, 3, H, W) -> int64 (T, N), checked (``Autoencoder.encode``, tokens searched for
        ``search_steps``)."""
        return batched(lambda f: self.model.encode(f, search_steps=search_steps), frames, size=self.batch_size)

    def encode_clip(self, frames: Tensor, search_steps: int = 0) -> tuple[list[Tensor], Tensor]:
        """frames: uint8 (T, 3, H, W) -> (tokens of each frame, int64 (N); the reconstruction, uint8 (T, 3, H, W))."""
        tokens = self.encode_tokens(frames, search_steps)
        return list(tokens), batched(self.model.decode, tokens, size=self.batch_size)

    def decode_clip(self, tokens: list[Tensor] | Tensor) -> Tensor:
        """Tokens of each frame (a list of (N,), or (T, N)) -> uint8 (T, 3, H, W)."""
        tokens = tokens if isinstance(tokens, Tensor) else torch.stack(list(tokens))
        return batched(self.model.decode, tokens, size=self.batch_size)

    # ---- the model's weights, device and mode --------------------------------------------------------------------
    def state_dict(self, *args, **kwargs) -> dict:
        return self.model.state_dict(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self.model.parameters(recurse)

    def to(self, *args, **kwargs) -> "FrameCodec":
        self.model.to(*args, **kwargs)
        return self

    def eval(self) -> "FrameCodec":
        self.model.eval()
        return self


def clip_codec(model, batch_size: int = 32):
    """``model`` answering the clip API: a ``FrameCodec`` for a per-frame ``Autoencoder``, any codec that has
    ``encode_clip`` (``VideoCodec``, a ``FrameCodec``) as it is. The one place that tells the kinds apart."""
    if isinstance(model, Autoencoder):
        return FrameCodec(model, batch_size)
    if not hasattr(model, "encode_clip"):
        raise TypeError(f"{type(model).__name__} is not a codec (no encode_clip, and not a per-frame Autoencoder)")
    return model


def clip_tokens(codec, frames: Tensor, search_steps: int = 0, bf16: bool = False) -> list[Tensor]:
    """The tokens of each frame of a clip, as ``encode_clip`` gives them, skipping the reconstruction where the codec
    can (``encode_tokens``: no frame is coded against another). ``bf16``: under bfloat16 autocast on CUDA, for such a
    codec only (a conditional frame's reference must be the float reconstruction its decoder computes).
    ``search_steps`` need ``supports_search``."""
    if search_steps and not getattr(codec, "supports_search", False):
        raise ValueError("token search (search_steps) is for per-frame models; a video codec encodes its clips as "
                         "they are")
    if not hasattr(codec, "encode_tokens"):
        return codec.encode_clip(frames)[0]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        return list(codec.encode_tokens(frames, search_steps=search_steps))


def transmit(codec, tokens: list[Tensor]) -> tuple[list[Tensor], list[int]]:
    """Each frame's tokens of a clip (as ``encode_clip`` gives them, from a group's start) -> (the tokens a decoder
    that has only the bytes receives: each frame ``pack``-ed at its type's bits and ``unpack``-ed, int64 (n_t,) on
    the tokens' device; the bytes of each frame). Where every evaluation and export check counts a frame's cost."""
    formats, received, sizes = codec.frame_formats(), [], []
    for tok, kind in zip(tokens, frame_types(len(tokens), codec.gop), strict=True):
        bits = formats[kind]["bits_per_token"]
        data = pack(tok[None], bits=bits)
        received.append(unpack(data, 1, len(tok), bits)[0].to(tok.device))
        sizes.append(len(data))
    return received, sizes
