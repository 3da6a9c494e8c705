"""Baseline codecs at matched bytes per frame, on the same preprocessed uint8 frames (3, H, W) as our codec.

- Intra image codecs through Pillow (JPEG, WebP, AVIF), full size or downscaled then upsampled bicubically. Per
  frame, every (size, quality) pair on a grid is encoded once; a byte budget then picks the best PSNR among the
  candidates that fit, so a budget is never exceeded. A codec that cannot fit at all is reported at its smallest
  output, flagged ``fits=False``.
- An inter-frame video codec (HEVC through PyAV's libx265) over whole clips at constant QP; the QP is chosen per
  clip as the best one whose average bytes per frame fit the budget. Bytes are the encoder's packet payloads
  (no container), the same accounting as our packed tokens.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image

from compressor.metrics import frame_psnr
from compressor.utils import batched

# (W, H) candidates, all at the frame's 2:1 aspect; the first is full size for 128x256 frames.
SIZES = ((256, 128), (192, 96), (128, 64), (96, 48), (64, 32), (48, 24), (32, 16))
IMAGE_CODECS = {
    # Pillow format, save options, quality grid. method=6 is WebP's strongest; AVIF's default speed keeps time sane.
    "jpeg": ("JPEG", {"optimize": True}, tuple(range(0, 101, 5))),
    "webp": ("WEBP", {"method": 6}, tuple(range(0, 101, 5))),
    "avif": ("AVIF", {"speed": 6}, tuple(range(0, 101, 10))),
}


@dataclass
class Candidate:
    """One encoding of one frame."""

    nbytes: int
    psnr: float
    quality: int
    size: tuple[int, int]  # (W, H) that was encoded


def image_roundtrip(frame: torch.Tensor, codec: str, quality: int, size: tuple[int, int]) -> tuple[bytes, torch.Tensor]:
    """uint8 (3, H, W) -> (encoded bytes, uint8 (3, H, W) reconstruction at the original size)."""
    fmt, options, _ = IMAGE_CODECS[codec]
    H, W = frame.shape[-2:]
    img = Image.fromarray(frame.permute(1, 2, 0).numpy())
    if size != (W, H):
        img = img.resize(size, Image.BOX)  # the same area filter as compressor.preprocess
    buf = io.BytesIO()
    img.save(buf, fmt, quality=quality, **options)
    out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if out.size != (W, H):
        out = out.resize((W, H), Image.BICUBIC)
    return buf.getvalue(), torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def image_candidates(frame: torch.Tensor, codec: str, downscale: bool) -> list[Candidate]:
    """Encode one frame at every grid quality, at full size only or at every size in ``SIZES``."""
    H, W = frame.shape[-2:]
    sizes = [s for s in SIZES if s[0] <= W and s[1] <= H and s[0] * H == s[1] * W] if downscale else [(W, H)]
    out = []
    for size in sizes:
        for q in IMAGE_CODECS[codec][2]:
            data, recon = image_roundtrip(frame, codec, q, size)
            out.append(Candidate(len(data), frame_psnr(recon[None], frame[None]).item(), q, size))
    return out


def best_within(candidates: list[Candidate], budget: float) -> tuple[Candidate, bool]:
    """Best PSNR among candidates of at most ``budget`` bytes; if none fits, the smallest one and ``False``."""
    fitting = [c for c in candidates if c.nbytes <= budget]
    if fitting:
        return max(fitting, key=lambda c: (c.psnr, -c.nbytes)), True
    return min(candidates, key=lambda c: (c.nbytes, -c.psnr)), False


# ---- inter-frame video codec -------------------------------------------------------------------------------------
HEVC_QPS = tuple(range(24, 52, 3))


def hevc_roundtrip(frames: torch.Tensor, fps: float, qp: int) -> tuple[list[int], torch.Tensor]:
    """uint8 (T, 3, H, W) clip -> (payload bytes per frame in decode order, uint8 (T, 3, H, W) reconstruction)."""
    T, _, H, W = frames.shape
    enc = av.CodecContext.create("libx265", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    rate = max(1, round(fps * 1000))
    enc.time_base, enc.framerate = Fraction(1000, rate), Fraction(rate, 1000)
    # info=0 drops x265's version SEI (hundreds of bytes in the first frame); log-level=error keeps stderr clean.
    enc.options = {"x265-params": f"qp={qp}:info=0:log-level=error", "preset": "medium"}
    packets = []
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(f.permute(1, 2, 0).numpy(), format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    dec = av.CodecContext.create("hevc", "r")
    recon = []
    for p in packets:
        recon += [torch.from_numpy(d.to_ndarray(format="rgb24")).permute(2, 0, 1) for d in dec.decode(p)]
    recon += [torch.from_numpy(d.to_ndarray(format="rgb24")).permute(2, 0, 1) for d in dec.decode(None)]
    if len(recon) != T:
        raise RuntimeError(f"HEVC round trip returned {len(recon)} frames for {T}")
    return [p.size for p in packets], torch.stack(recon)


@dataclass
class VideoPoint:
    """One constant-QP encoding of one clip."""

    qp: int
    bytes_per_frame: float
    psnr: torch.Tensor  # (T,) per frame
    kept: torch.Tensor | None = None  # uint8 (len(keep_frames), 3, H, W): reconstructions of the kept frames


def hevc_sweep(frames: torch.Tensor, fps: float, qps=HEVC_QPS, keep_frames: list[int] | None = None) -> list[VideoPoint]:
    """Encode a clip at each QP, keeping the reconstructions of ``keep_frames`` (for scoring and galleries)."""
    points = []
    for qp in qps:
        sizes, recon = hevc_roundtrip(frames, fps, qp)
        psnr = batched(frame_psnr, recon, frames, size=64)
        points.append(VideoPoint(qp, sum(sizes) / len(frames), psnr, recon[keep_frames] if keep_frames else None))
    return points


def best_video_point(points: list[VideoPoint], budget: float) -> tuple[VideoPoint, bool]:
    """Highest mean PSNR among QPs whose average bytes per frame fit; else the smallest one and ``False``."""
    fitting = [p for p in points if p.bytes_per_frame <= budget]
    if fitting:
        return max(fitting, key=lambda p: p.psnr.mean().item()), True
    return min(points, key=lambda p: p.bytes_per_frame), False
