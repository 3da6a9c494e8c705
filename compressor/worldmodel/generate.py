"""Futures a person can look at: from a few real frames, generated frames sampled with a temperature, decoded by
the compressor that made the tokens, saved as a PNG strip (real frames above, generated below) and an mp4 (real |
generated side by side)."""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from compressor.utils import atomic_write
from compressor.worldmodel.data import Segment
from compressor.worldmodel.model import WorldModel


@torch.no_grad()
def sample_future(model: WorldModel, context: torch.Tensor, frames: int, temperature: float,
                  seed: int) -> torch.Tensor:
    """context (P, N) real tokens -> (frames, N) sampled tokens; the same seed gives the same tokens."""
    generator = torch.Generator().manual_seed(seed)
    return model.rollout(context[None], frames, temperature, generator)[0]


def strip(rows: list[torch.Tensor], gap: int = 4) -> np.ndarray:
    """rows of uint8 (T, 3, H, W) -> one uint8 (R*H + gaps, T*W, 3) image, rows stacked, frames side by side."""
    images = [torch.cat(list(r), dim=2).permute(1, 2, 0).numpy() for r in rows]  # (H, T*W, 3)
    width = max(i.shape[1] for i in images)
    out = []
    for i, img in enumerate(images):
        pad = np.full((img.shape[0], width - img.shape[1], 3), 255, np.uint8)
        out.append(np.concatenate([img, pad], 1))
        if i < len(images) - 1:
            out.append(np.full((gap, width, 3), 255, np.uint8))
    return np.concatenate(out, 0)


def write_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_write(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    """uint8 (T, H, W, 3) -> an H.264 mp4 (PyAV)."""
    import av

    T, H, W, _ = frames.shape
    with atomic_write(path) as tmp:
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.options = {"crf": "18"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def futures(model: WorldModel, codec, segments: list[Segment], output: str, context: int = 4, frames: int = 16,
            temperature: float = 0.8, seed: int = 0, fps: int = 4) -> list[dict]:
    """For the longest segment of each source: ``context`` real frames from its middle, ``frames`` sampled after
    them; writes ``<clip>.png`` and ``<clip>.mp4`` into ``output`` and returns what it wrote.

    Args:
        model: the world model (its context must hold ``context`` frames).
        codec: the compressor that decodes the tokens (``compressor.load``).
        segments: the val segments.
        output: the folder for the files.
        context: real frames given.
        frames: frames generated.
        temperature: sampling temperature (0: greedy).
        seed: the sampling seed (the same for every clip).
        fps: the video's frame rate.
    """
    if context >= model.config.context_frames:
        raise ValueError(f"context {context} must be below the model's {model.config.context_frames} frames")
    os.makedirs(output, exist_ok=True)
    longest: dict[str, Segment] = {}
    for s in segments:
        if len(s.tokens) >= context + frames and (s.source not in longest
                                                  or len(s.tokens) > len(longest[s.source].tokens)):
            longest[s.source] = s
    written = []
    for source, s in sorted(longest.items()):
        start = (len(s.tokens) - context - frames) // 2
        real = s.tokens[start : start + context + frames]  # (context + frames, N)
        generated = sample_future(model, real[:context], frames, temperature, seed)  # (frames, N)
        real_px = codec.decode(real)  # uint8 (T, 3, H, W)
        gen_px = torch.cat([real_px[:context], codec.decode(generated)])
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(source)[0]) + f"-s{s.index}"
        png = os.path.join(output, name + ".png")
        mp4 = os.path.join(output, name + ".mp4")
        write_png(png, strip([real_px, gen_px]))
        side = torch.cat([real_px, torch.full_like(real_px[..., :4], 255), gen_px], dim=3)  # (T, 3, H, 2W + 4)
        write_mp4(mp4, side.permute(0, 2, 3, 1).numpy(), fps)
        written.append({"source": source, "segment": s.index, "start_frame": start, "png": png, "mp4": mp4,
                        "context": context, "frames": frames, "temperature": temperature, "seed": seed})
    return written
