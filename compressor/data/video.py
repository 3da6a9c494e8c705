"""Video input: the one preprocessing function, frame iteration with PyAV, and video lists with splits.

Every path from a decoded frame to model input goes through ``preprocess``: training, frame shards, encoding
and evaluation. If these drifted apart the tokens would silently change meaning.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import zlib
from collections.abc import Iterator, Sequence

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from compressor.utils import open_checked

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".hevc", ".h265", ".h264", ".avi", ".mov", ".gif", ".webm", ".ts")
DEFAULT_DASHCAM_DIR = os.environ.get(
    "COMPRESSOR_DASHCAM_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "dashcam")
)


def preprocess(frame, image_size: tuple[int, int] = (128, 256)) -> Tensor:
    """Any decoded RGB frame -> model input (3, H, W) uint8: centre crop to the aspect ratio, then area resize.

    Args:
        frame: an ``av.VideoFrame``, a PIL image, or an RGB uint8 array/tensor shaped (h, w, 3).
        image_size: (H, W) of the model.
    """
    if isinstance(frame, av.VideoFrame):
        frame = frame.to_ndarray(format="rgb24")
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if isinstance(frame, Tensor):
        frame = frame.cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame shaped (h, w, 3), got {frame.dtype} {frame.shape}")
    H, W = image_size
    top, left, ch, cw = crop_box(*frame.shape[:2], image_size)
    crop = np.ascontiguousarray(frame[top : top + ch, left : left + cw])
    # PIL's BOX filter is an exact area average and costs ~1-3 ms on a 720p frame (torch's area mode ~20 ms).
    resized = np.asarray(Image.fromarray(crop).resize((W, H), Image.BOX))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous()


def crop_box(h: int, w: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centred window of an h x w frame with the aspect ratio of
    ``image_size``, in whole pixels so the crop is exact. ``ValueError`` if not even one pixel row fits (a 1-pixel
    wide frame), which would otherwise resize an empty crop to a black frame."""
    H, W = image_size
    if w * H > h * W:
        cw, ch = round(h * W / H), h
    else:
        cw, ch = w, round(w * H / W)
    if ch < 1 or cw < 1:
        raise ValueError(f"a {w}x{h} frame is too small to crop to the {W}:{H} aspect ratio")
    return (h - ch) // 2, (w - cw) // 2, ch, cw


MAX_VIDEO_BYTES = 1 << 40  # open_checked's bound: any real video; the check that matters is "a regular file"


def open_video(path: str) -> av.container.InputContainer:
    """``av.open(path)`` for reading, once ``open_checked`` found a regular file: a FIFO would block and a device
    (a symlink to /dev/zero) would decode forever. ``ValueError`` names the file."""
    open_checked(path, MAX_VIDEO_BYTES).close()
    return av.open(path)


def iter_frames(path: str) -> Iterator[av.VideoFrame]:
    """Decoded frames of the first video stream, in order."""
    with open_video(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from container.decode(stream)


def read_frames(path: str, image_size: tuple[int, int] = (128, 256), stride: int = 1) -> Tensor:
    """Every ``stride``-th frame of a video, preprocessed: uint8 (T, 3, H, W)."""
    frames = [preprocess(f, image_size) for i, f in enumerate(iter_frames(path)) if i % stride == 0]
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    return torch.stack(frames)


def list_videos(videos: str | Sequence[str], recursive: bool = False) -> list[str]:
    """Resolve a directory (its subdirectories too if ``recursive``), glob, file or list of those to sorted videos."""
    items = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    found: list[str] = []
    for item in map(str, items):
        if os.path.isdir(item):
            walk = os.walk(item) if recursive else [(item, None, os.listdir(item))]
            found += [os.path.join(d, f) for d, _, files in walk for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
        elif any(c in item for c in "*?["):
            found += sorted(glob.glob(item, recursive=True))
        elif os.path.exists(item):
            found.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item} (not a video, directory or glob match)")
    if not found:
        raise FileNotFoundError(f"no videos found in {videos!r} (extensions: {', '.join(VIDEO_EXTENSIONS)})")
    return sorted(set(found))


SPLITS = ("train", "val")
MAX_TSV_BYTES = 16 << 20  # a MANIFEST.tsv lists clips: far more than any collection's, far less than memory


def read_manifest(directory: str) -> dict[str, str]:
    """``MANIFEST.tsv`` in a video directory -> {file name: split}; empty when there is none.

    ``ValueError`` for a file without ``file`` and ``split`` columns, or a split other than exactly ``train`` or
    ``val``: a clip marked ``test``, ``VAL`` or ``val `` would otherwise be trained on. The file must be a regular
    file of a bounded size (``open_checked``): a FIFO or a device never hangs the reader.
    """
    path = os.path.join(directory, "MANIFEST.tsv")
    if not os.path.lexists(path):
        return {}
    with open_checked(path, MAX_TSV_BYTES) as f:
        text = f.read().decode("utf-8", errors="replace")
    rows = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    if not {"file", "split"} <= set(rows.fieldnames or ()):
        raise ValueError(f"{path} has no file and split columns (it has {rows.fieldnames}); the split column says "
                         "which clips are held out")
    splits: dict[str, str] = {}
    for row in rows:
        name, split = row["file"], row["split"]
        if split not in SPLITS or splits.setdefault(name, split) != split:
            raise ValueError(f"{path}, line {rows.line_num}: {name} has split {split!r}"
                             + (f" and {splits[name]!r} on an earlier line" if name in splits else "")
                             + "; a split is exactly train or val (a clip held out under another name would be "
                             "trained on)")
    return splits


def split_videos(paths: Sequence[str], val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split by whole video, never by frame: frames of one clip are near-duplicates and would leak.

    A ``MANIFEST.tsv`` beside the videos decides when present (its ``split`` column: train / val). Otherwise a
    hash of the file name does, so the split is stable as videos are added.
    """
    train, val = [], []
    manifests: dict[str, dict[str, str]] = {}
    hashed = False
    for p in paths:
        d = os.path.dirname(os.path.abspath(p))
        manifest = manifests.setdefault(d, read_manifest(d))
        name = os.path.basename(p)
        if name in manifest:
            split = manifest[name]
        else:
            hashed = True
            # fsencode: the bytes of the name, so a name that is not UTF-8 splits too (UTF-8 ones split as before)
            split = "val" if (zlib.crc32(os.fsencode(name)) % 1000) < val_fraction * 1000 else "train"
        (val if split == "val" else train).append(p)
    # a manifest that puts every video in train (a training-only collection) is obeyed
    if hashed and not val and val_fraction > 0 and len(train) > 1:
        val.append(train.pop())  # tiny collections still get one held-out video
    return train, val
