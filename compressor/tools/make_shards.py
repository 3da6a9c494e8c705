"""Turn a video collection into webdataset frame shards at training resolution (the cluster data path).

    python -m compressor.tools.make_shards --input ../shared/dashcam --output data/shards/dashcam [--stride 1] [--maxcount 1000]

Each video becomes its own shard(s), ``{split}-{key}-{k:03d}.tar``, with samples ``frame.npy`` (uint8
(3, H, W), after ``compressor.preprocess``) and ``meta.json`` (source, frame index). A video's source is its path
relative to the inputs' common folder, and its key that path made safe plus a hash of it (``video_key``), so
``a/clip.mp4`` and ``b/clip.mp4`` never share shards. The split is by whole video (``MANIFEST.tsv`` when present).
Shards are written under a temporary name and renamed, and a video whose ``.done`` marker exists is skipped, so a
killed job resumes where it stopped. The output's ``make_shards.json`` records the frame size, stride and input
folder: a run with other settings into the same output is refused, since it would skip every finished video and
keep frames of the old settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import webdataset as wds
from tqdm import tqdm

from compressor.data.frame_shards import SETTINGS, shard_settings
from compressor.data.video import iter_frames, list_videos, preprocess, split_videos
from compressor.latents.samples import video_key
from compressor.utils import write_json



def check_settings(out: str, settings: dict) -> None:
    """Record ``settings`` in a new output; refuse an output written with other settings (or unknown ones)."""
    old = shard_settings(out)
    if old is not None:
        if old != settings:
            raise ValueError(f"{out} holds frame shards of other settings ({old}, from {SETTINGS}) than this run's "
                             f"{settings}; write them to another --output, or delete {out} to redo it")
        return
    if any(name.endswith((".done", ".tar")) for name in os.listdir(out)):
        raise ValueError(f"{out} holds frame shards but no {SETTINGS}, so their frame size and stride are unknown; "
                         "write to another --output, or delete the old shards to redo them")
    write_json(os.path.join(out, SETTINGS), settings, indent=None)


def write_video_shards(path: str, source: str, split: str, out: str, image_size: tuple[int, int], stride: int,
                       maxcount: int) -> int:
    """Frame shards of one video; ``source`` is its path relative to the input root, which names its shards."""
    key = video_key(source)
    done = os.path.join(out, f"{split}-{key}.done")
    if os.path.exists(done):
        return 0
    written, shard_idx, sink, tmp_names = 0, 0, None, []
    for i, frame in enumerate(iter_frames(path)):
        if i % stride:
            continue
        if sink is None or written % maxcount == 0 and written:
            if sink is not None:
                sink.close()
            tmp = os.path.join(out, f"{split}-{key}-{shard_idx:03d}.tar.tmp")
            tmp_names.append(tmp)
            sink, shard_idx = wds.TarWriter(tmp), shard_idx + 1
        x = preprocess(frame, image_size).numpy()
        sink.write({"__key__": f"{key}-{i:07d}", "frame.npy": x,
                    "meta.json": json.dumps({"source": source, "frame": i}).encode()})
        written += 1
    if sink is not None:
        sink.close()
    for tmp in tmp_names:
        os.replace(tmp, tmp[: -len(".tmp")])
    with open(done, "w") as f:
        json.dump({"source": path, "frames": written, "shards": len(tmp_names)}, f)
    return written


def plan(videos: list[str], val_fraction: float, out: str) -> tuple[list[tuple[str, str, str]], str]:
    """(path, source, split) per video, each file once; ``source`` is its path relative to the inputs' common
    folder. Refused up front: two videos with one key, and a video whose frames were written in the other split
    (its frames would be in both)."""
    paths, seen = [], set()
    for path in sorted(map(os.path.abspath, videos)):  # not resolved: a link's MANIFEST.tsv is beside the link
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            paths.append(path)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    train, val = split_videos(paths, val_fraction)
    jobs = [(p, os.path.relpath(p, root), "train") for p in train] + [(p, os.path.relpath(p, root), "val") for p in val]
    owners: dict[str, str] = {}
    for _, source, split in jobs:
        key = video_key(source)
        if owners.setdefault(key, source) != source:
            raise ValueError(f"{owners[key]} and {source} would share the shard name {key}; rename one of them")
        other = "val" if split == "train" else "train"
        if os.path.exists(os.path.join(out, f"{other}-{key}.done")):
            raise ValueError(f"{source} was written to {out} as {other} and is now {split}: its frames would be in "
                             "both splits; delete its shards there to move it")
    return jobs, root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.make_shards", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, nargs="+", help="videos: directories, globs or files")
    ap.add_argument("--output", required=True, help="output directory for the shards (e.g. data/shards/NAME)")
    ap.add_argument("--image-size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    ap.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    ap.add_argument("--maxcount", type=int, default=1000, help="frames per shard")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="share of videos held out without a manifest")
    args = ap.parse_args(argv)
    try:
        if min(args.stride, args.maxcount, *args.image_size) < 1:
            raise ValueError("--stride, --maxcount and --image-size must be at least 1")
        os.makedirs(args.output, exist_ok=True)
        jobs, root = plan(list_videos(args.input), args.val_fraction, args.output)
        check_settings(args.output, {"image_size": list(args.image_size), "stride": args.stride, "root": root})
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from e
    total = 0
    for path, source, split in tqdm(jobs, desc="videos", unit="video"):
        try:
            total += write_video_shards(path, source, split, args.output, tuple(args.image_size), args.stride,
                                        args.maxcount)
        except Exception as e:  # a damaged video should not kill a job over thousands of them
            print(f"skipping {path}: {type(e).__name__}: {e}", file=sys.stderr)
    val = sum(split == "val" for *_, split in jobs)
    print(f"wrote {total} frames from {len(jobs)} videos ({len(jobs) - val} train, {val} val) to {args.output}")


if __name__ == "__main__":
    main()
