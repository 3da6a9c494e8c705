"""Token segments for the world model: read (verified) with ``LatentDataset``, held in memory, cut into windows.

The recipe-48k latents are 14k train frames x 128 tokens (14 MB as int64): holding them in memory lets the training
split hold out whole source videos for early stopping, and lets scoring walk every frame of every segment in order.
Reads go through ``LatentDataset`` (manifests, CRCs, one model's tokens), so encode.py's shards and commaVQ-layout
``.npy`` folders both work.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from compressor.entropy.coding import digit_radices
from compressor.latents import LatentDataset
from compressor.latents.samples import grid_of


@dataclass
class Segment:
    """One segment of one video: ``tokens`` int64 (T, N), in frame order."""

    source: str
    index: int
    tokens: torch.Tensor


@dataclass
class TokenFormat:
    """What a model is built for: codebook size, tokens per frame, grid, digit radices, model id."""

    codebook_size: int
    num_tokens: int
    grid: tuple[int, int]
    radices: list[int]
    model_id: str


def read_segments(shards: str | list[str]) -> tuple[list[Segment], TokenFormat]:
    """Every segment of latent shards (a folder, glob or list; commaVQ ``.npy`` folders too) and their format.

    The radices are the FSQ levels when the codebook factors into them (15360 -> [8, 8, 8, 6, 5], the recipe's
    levels, least significant first: ``compressor.entropy.coding.digit_radices``); for a VQ (commaVQ's 1024 codes)
    they are mere base-8 digits, so the factorised head is then a weak model and the full softmax is the one to use.
    """
    frames: dict[tuple[str, int], list[torch.Tensor]] = {}
    meta: dict | None = None
    for item in LatentDataset(shards, seq_len=1):
        frames.setdefault((item["source"], item["segment"]), []).append(item["tokens"][0])
        if meta is None:
            meta = {"model_id": item["model_id"]}
    if not frames:
        raise ValueError(f"no token frames in {shards}")
    segments = [Segment(src, seg, torch.stack(f)) for (src, seg), f in frames.items()]
    return segments, _format(shards, segments, meta["model_id"])


def _format(shards, segments: list[Segment], model_id: str) -> TokenFormat:
    from compressor.latents.find import expand_urls
    from compressor.latents.shards import read_segments as raw_segments

    first = next(raw_segments(expand_urls(shards)[0]))["meta"]  # one segment's metadata says the layout
    num_tokens = segments[0].tokens.shape[1]
    codebook = int(first.get("codebook_size") or 2 ** int(first.get("bits_per_token", 14)))
    grid = grid_of(first) or (1, num_tokens)
    if max(int(s.tokens.max()) for s in segments) >= codebook:
        raise ValueError(f"tokens beyond the codebook of {codebook} codes in {shards}")
    return TokenFormat(codebook, num_tokens, tuple(grid), digit_radices(codebook), model_id)


HOLDOUTS = ("camera", "video")


def camera_of(source: str) -> str:
    """The camera (the public repository) a video came from: ``owner__repo`` of ``[folder/]owner__repo__clip.mp4``
    (the dashcam folders' naming, ../shared/dashcam/MANIFEST.tsv); a name without that form is its own camera."""
    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    parts = name.split("__")
    return "__".join(parts[:2]) if len(parts) >= 3 else name


def split_holdout(segments: list[Segment], fraction: float,
                  by: str = "camera") -> tuple[list[Segment], list[Segment]]:
    """Hold out data for early stopping: (training segments, held-out segments). Deterministic (a hash of names).

    ``by="camera"`` (default) holds out whole cameras (``camera_of``), so the held-out set is new scenes from new
    cameras, as the ``val-new-cameras`` set is: cameras in the order of a hash of their names, each taken if the
    held-out frames stay within ``fraction`` of all frames with it (the first camera where none fits), never all.
    ``by="video"`` holds out whole videos instead: ``round(fraction * videos)`` of them (at least one) by a hash of
    their names; their cameras keep their other videos in training, so the held-out loss rewards knowing a camera
    (the runs before issue 37's third run held out 4 videos this way and ranked two models opposite to val). Either
    way no video has windows on both sides, or the held-out loss would be a memorisation test.
    """
    if by not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {by!r}")
    key = camera_of if by == "camera" else (lambda source: source)
    groups = sorted({key(s.source) for s in segments}, key=lambda g: zlib.crc32(g.encode()))
    if len(groups) < 2 or fraction <= 0:
        return segments, []
    if by == "video":
        held = set(groups[: max(1, round(fraction * len(groups)))])
    else:
        frames = {g: 0 for g in groups}
        for s in segments:
            frames[key(s.source)] += len(s.tokens)
        budget, held, taken = fraction * sum(frames.values()), set(), 0
        for g in groups[:-1]:  # at least one camera stays in training
            if taken + frames[g] <= budget:  # a camera too large to fit is skipped, not a reason to stop
                held.add(g)
                taken += frames[g]
        held = held or {groups[0]}
    return ([s for s in segments if key(s.source) not in held], [s for s in segments if key(s.source) in held])


class TokenWindows(Dataset):
    """Windows of ``frames`` consecutive frames of each segment, starting every ``stride`` frames: (frames, N).

    A segment shorter than a window gives none. Args:
        segments: the segments.
        frames: frames per window (the model's context).
        stride: frames between window starts.
    """

    def __init__(self, segments: list[Segment], frames: int, stride: int = 1):
        self.segments = segments
        self.frames = frames
        self.index = [(i, start) for i, s in enumerate(segments)
                      for start in range(0, len(s.tokens) - frames + 1, stride)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        seg, start = self.index[i]
        return self.segments[seg].tokens[start : start + self.frames]  # (T, N)


def scoring_windows(length: int, frames: int) -> list[tuple[int, int, int]]:
    """How to score every frame 1..length-1 of a segment teacher-forced, each with at least half a window of context
    where the segment allows: (window start, window end, first scored frame), windows ``frames`` long (shorter only
    when the segment is), overlapping by half, each scoring the frames the previous one did not."""
    if length < 2:
        return []
    if length <= frames:
        return [(0, length, 1)]
    step = max(1, frames // 2)
    out, scored = [], 1
    start = 0
    while scored < length:
        start = min(start, length - frames)
        out.append((start, start + frames, scored))
        scored = start + frames
        start += step
    return out


def unigram_counts(segments: list[Segment], codebook_size: int) -> torch.Tensor:
    """Token counts over every frame (float64, (V,))."""
    counts = torch.zeros(codebook_size, dtype=torch.float64)
    for s in segments:
        counts += torch.bincount(s.tokens.flatten(), minlength=codebook_size).double()
    return counts


def repeat_share(segments: list[Segment]) -> float:
    """The share of tokens (frames 2..T of each segment) equal to the previous frame's at the same position: the
    maximum-likelihood alpha of the copy-previous model."""
    same = total = 0
    for s in segments:
        same += int((s.tokens[1:] == s.tokens[:-1]).sum())
        total += s.tokens[1:].numel()
    return same / max(total, 1)


def frames_of(segments: list[Segment]) -> int:
    return sum(len(s.tokens) for s in segments)
