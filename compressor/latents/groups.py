"""Video-mode latents: segments coded in groups of an intra frame and conditional frames, in the shard format.

A video codec (``compressor.codec.video.VideoCodec``) gives an intra frame ``I`` its per-frame tokens (128) and a
conditional frame ``P`` fewer or as many (``merge``: 128, 64 or 32). A segment is still one uint16 array (T, N),
N the intra frame's count: a ``P`` row holds its tokens in its first places and zeros after them. One fixed width
keeps every check of the format as it is (the .npy header against ``num_frames`` x ``num_tokens``, the token CRC,
the codebook range, the entropy coder's (T, N) segments) and lets a reader slice frames as rows; the zeros cost
nothing once entropy-coded, and at most (N - n) x 2 bytes a frame in ``tokens.npy``.

The sample's json says the rest (``video_fields``): ``mode: "video"``, ``gop``, ``frame_types`` (one letter a
frame, ``"IPPPPPPPIPP"``) and ``frame_formats`` (per type: ``num_tokens``, ``token_layout``, ``codebook_size``,
``bits_per_token``, ``bytes_per_frame``). Frame t of a segment is ``I`` exactly when t % gop == 0: every segment
starts a group, so it decodes alone, and so does any window that starts at a multiple of ``gop``. Per-frame samples
carry none of these fields (no ``mode`` means per-frame), so their shards stay as they were.

Pure numpy and torch: ``LatentDataset`` and the shard checks use it without loading a model.
"""

from __future__ import annotations

import numpy as np
import torch

from compressor.codec.packing import frame_types

VIDEO = "video"


def is_video(meta: dict) -> bool:
    return meta.get("mode") == VIDEO


def video_fields(codec, gop: int) -> dict:
    """The json fields every video-mode sample of ``codec`` shares (``frame_types`` is added per segment)."""
    return {"mode": VIDEO, "gop": gop, "frame_formats": codec.frame_formats()}


def codec_fields(codec) -> dict:
    """The json fields every sample of a clip codec (``compressor.codec.clips``) shares, in the format its tokens
    take: a codec whose frames all have one size (``bytes_per_frame``: per-frame tokens) says its bits and bytes, as
    samples always did; any other writes video-mode samples (``video_fields``)."""
    if hasattr(codec, "bytes_per_frame"):
        return {"bits_per_token": codec.bits_per_token, "bytes_per_frame": codec.bytes_per_frame,
                "image_size": list(codec.image_size)}
    return {"image_size": list(codec.image_size), **video_fields(codec, codec.gop)}


def segment_fields(fields: dict, num_frames: int) -> dict:
    """The json fields of one segment of ``num_frames`` beyond ``fields`` (``codec_fields``): a video-mode
    segment's frame types."""
    return {"frame_types": frame_types(num_frames, fields["gop"])} if is_video(fields) else {}


def pad_frames(tokens: list[torch.Tensor], width: int) -> np.ndarray:
    """Each frame's tokens, int (n_t,), n_t <= width -> uint16 (T, width), zeros after each frame's own."""
    out = np.zeros((len(tokens), width), dtype=np.uint16)
    for t, tok in enumerate(tokens):
        out[t, : len(tok)] = tok.cpu().numpy()
    return out


def frame_tokens(meta: dict) -> list[int]:
    """The tokens each frame of a video-mode sample holds, in order."""
    formats = meta["frame_formats"]
    return [formats[kind]["num_tokens"] for kind in meta["frame_types"]]


def unpad(tokens: torch.Tensor, counts) -> list[torch.Tensor]:
    """tokens (T, N) of a video-mode segment or clip, and its tokens per frame (``frame_tokens(meta)``, or a
    ``LatentDataset`` item's ``frame_tokens``) -> each frame's own tokens, (n_t,), as ``decode_clip`` takes them."""
    return [row[: int(n)] for row, n in zip(tokens, counts, strict=True)]


def check_video(tokens: np.ndarray, meta: dict) -> None:
    """A video-mode sample's tokens (T, N) against its json; ``ValueError`` saying what disagrees."""
    gop, types, formats = meta.get("gop"), meta.get("frame_types"), meta.get("frame_formats")
    if type(gop) is not int or gop < 1:
        raise ValueError(f"gop is {gop!r}, not a group length")
    if not isinstance(types, str) or types != frame_types(len(tokens), gop):
        raise ValueError(f"frame_types do not give one frame type a frame, I every {gop} frames from the first")
    if not isinstance(formats, dict) or any(not isinstance(formats.get(k), dict) for k in set(types)):
        raise ValueError("frame_formats do not describe every frame type")
    for kind in set(types):
        n, codebook = formats[kind].get("num_tokens"), formats[kind].get("codebook_size")
        if type(n) is not int or not 0 < n <= tokens.shape[1] or type(codebook) is not int or codebook < 1:
            raise ValueError(f"frame_formats[{kind!r}] gives {n!r} tokens of {codebook!r} codes for rows of "
                             f"{tokens.shape[1]}")
        rows = tokens[np.frombuffer(types.encode(), dtype=np.uint8) == ord(kind)]
        if rows[:, :n].size and int(rows[:, :n].max()) >= codebook:
            raise ValueError(f"{kind} frames hold tokens outside their codebook of {codebook}")
        if rows[:, n:].any():
            raise ValueError(f"{kind} frames hold {n} tokens, but their rows are not zero after them")


def window_starts(num_frames: int, seq_len: int, stride: int, gop: int | None) -> range:
    """Where windows of ``seq_len`` frames start in a segment: every ``stride`` frames; for a video-mode segment
    (``gop`` given) only at intra frames, so ``stride`` must be a multiple of ``gop`` (``ValueError`` otherwise)."""
    if gop is not None and frame_types(stride + 1, gop)[stride] != "I":  # a window's first frame must be intra
        raise ValueError(f"video-mode tokens come in groups of {gop} frames and a window must start at an intra "
                         f"frame to decode: stride must be a multiple of {gop}, got {stride} (leave stride unset "
                         "for one window per group)")
    return range(0, num_frames - seq_len + 1, stride)
