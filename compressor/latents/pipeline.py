"""The encode pipeline: whole video collections -> webdataset shards of token segments, resumable and sharded.

Decoding runs in DataLoader worker processes (one video per worker at a time) and overlaps inference in the
main process. Each sample is one segment of one video: ``tokens.npy`` uint16 (T, N) and ``json`` metadata.

Resumability: a shard holds whole videos only, is written under a temporary name and renamed when complete, and
only then are it and its videos recorded in this rank's manifest (also replaced atomically). The manifests are
the single truth: after a kill at any point, a re-run deletes this rank's partial shard and any finished shard
they do not record (a kill between rename and manifest write), and redoes exactly the videos that were in them,
so the result is byte for byte that of an uninterrupted run.

One run writes an output folder at a time (``lock_output``: an ``flock`` that ``encode.py`` holds for the run); the
ranks of one torchrun job share it. A video's identity is its resolved path relative to the root recorded in the
manifests by the folder's first run, so a resume given another parent folder as input skips what is done.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from compressor.codec.autoencoder import Autoencoder
from compressor.codec.checkpoint import model_id
from compressor.codec.clips import clip_codec, clip_tokens
from compressor.codec.video import VideoCodec
from compressor.entropy.priors import Prior
from compressor.entropy.stream import encode_segment
from compressor.latents.groups import codec_fields, is_video, pad_frames, segment_fields
from compressor.latents.manifest import (MAX_MANIFEST_BYTES, file_signature, forget_missing_shards, is_done,
                                         load_manifests, read_manifest)
from compressor.latents.samples import make_sample, sample_key
from compressor.latents.shards import read_segments
from compressor.latents.writer import (DiskFullError, ShardWriter, check_writable, remove_unrecorded,
                                       reporting_full_disk)
from compressor.data.video import crop_box, list_videos, open_video, preprocess
from compressor.utils import load_json, open_checked, worker, write_json


def find_videos(inputs: list[str]) -> tuple[list[str], str]:
    """Videos under directories (recursively), globs, files or ``@list.txt`` files -> (resolved paths, common root).

    Paths are resolved (``realpath``), so one file named twice (``d`` and ``d/``, a symlink, ``..``) is encoded once.
    """
    # Entries of a list file pass through unchecked: a missing one is recorded as failed, not fatal.
    listed = []
    for item in inputs:
        if item.startswith("@"):
            with open(item[1:]) as f:
                listed += [line.strip() for line in f if line.strip()]
    others = [item for item in inputs if not item.startswith("@")]
    paths = sorted({os.path.realpath(p) for p in listed + (list_videos(others, recursive=True) if others else [])})
    if not paths:
        raise FileNotFoundError(f"no videos found in {inputs}")
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return paths, root


def check_unique_keys(sources: list[str]) -> None:
    """Sample keys of distinct sources must differ; a hash collision is refused rather than losing a video."""
    owners: dict[str, str] = {}
    for source in sources:
        key = sample_key(source, 0)
        if owners.setdefault(key, source) != source:
            raise ValueError(f"{owners[key]} and {source} would share sample key {key}; rename one of them")


@dataclass
class Chunk:
    """Up to ``batch_size`` preprocessed frames of one segment of one video, produced by a decode worker."""

    video: int
    segment: int
    frames: torch.Tensor  # uint8 (B, 3, H, W)
    frame_indices: list[int]
    timestamps: list[float]
    last_in_segment: bool
    last_in_video: bool
    info: dict = field(default_factory=dict)  # fps and size; on the video's last chunk also status and reason


class DecodedChunks(IterableDataset):
    """Decodes the assigned videos in DataLoader workers and yields ``Chunk``s in order per video."""

    def __init__(self, videos: list[str], image_size: tuple[int, int], batch_size: int, segment_seconds: float,
                 fps: float | None):
        super().__init__()
        self.videos, self.image_size, self.batch_size = videos, image_size, batch_size
        self.segment_seconds, self.fps = segment_seconds, fps

    def __iter__(self) -> Iterator[Chunk]:
        wid, nw = worker()
        for v in range(wid, len(self.videos), nw):
            yield from self._video_chunks(v)

    def _video_chunks(self, v: int) -> Iterator[Chunk]:
        path = self.videos[v]
        status = {"status": "ok", "reason": "", "frames": 0}
        frames, indices, times, segment = [], [], [], 0
        try:
            container = open_video(path)
        except Exception as e:  # unreadable (or a FIFO, a device): recorded, never fatal
            yield Chunk(v, 0, torch.empty(0, 3, *self.image_size, dtype=torch.uint8), [], [], True, True,
                        {"status": "failed", "reason": f"{type(e).__name__}: {e}", "frames": 0})
            return
        with container:
            if not container.streams.video:
                yield Chunk(v, 0, torch.empty(0, 3, *self.image_size, dtype=torch.uint8), [], [], True, True,
                            {"status": "failed", "reason": "no video stream", "frames": 0})
                return
            stream = container.streams.video[0]
            try:
                if stream.width and stream.height:
                    crop_box(stream.height, stream.width, self.image_size)
            except ValueError as e:  # e.g. 1 pixel wide: no window of the model's aspect ratio fits
                yield Chunk(v, 0, torch.empty(0, 3, *self.image_size, dtype=torch.uint8), [], [], True, True,
                            {"status": "failed", "reason": str(e), "frames": 0})
                return
            src_fps = float(stream.average_rate or stream.guessed_rate or 25)
            out_fps = self.fps or src_fps
            seg_len = max(1, round(self.segment_seconds * out_fps))
            stream_info = {"source_fps": src_fps, "fps": out_fps, "original_size": [stream.width, stream.height]}
            status.update(stream_info)
            expected = stream.frames
            next_time, kept = 0.0, 0
            try:
                for i, frame in enumerate(container.decode(stream)):
                    t = float(frame.time) if frame.time is not None else i / src_fps
                    if self.fps is not None:  # resample by timestamp: keep the first frame at or after each tick
                        if t + 1e-6 < next_time:
                            continue
                        next_time += 1.0 / self.fps
                        while next_time <= t:
                            next_time += 1.0 / self.fps
                    frames.append(preprocess(frame, self.image_size))
                    indices.append(i)
                    times.append(round(t, 6))
                    kept += 1
                    end_of_segment = kept % seg_len == 0
                    if len(frames) == self.batch_size or end_of_segment:
                        yield Chunk(v, segment, torch.stack(frames), indices, times, end_of_segment, False,
                                    stream_info)
                        frames, indices, times = [], [], []
                        segment += end_of_segment
            except Exception as e:  # damaged mid-stream: keep what decoded
                status.update(status="truncated", reason=f"{type(e).__name__}: {e}")
            status["frames"] = kept
            if expected and self.fps is None and kept < expected:
                # Container frame counts are often a little off (edit lists, B-frame padding: 1010 decoded of
                # 1044 declared on a healthy clip here), so only a large shortfall means a silently cut file.
                status["container_frames"] = expected
                if status["status"] == "ok" and kept < 0.9 * expected:
                    status.update(status="truncated", reason=f"decoded {kept} of {expected} frames")
            if kept == 0:  # nothing to keep: failed, with the decoder's reason if it gave one
                status.update(status="failed", reason=status["reason"] or "no frames decoded")
        empty = torch.empty(0, 3, *self.image_size, dtype=torch.uint8)
        yield Chunk(v, segment, torch.stack(frames) if frames else empty, indices, times, True, True, status)


def first_recorded_meta(output: str, recorded: dict) -> dict:
    """The json of the first sample of ``output``'s recorded shards ({} for an empty folder)."""
    for name in sorted(recorded["shards"]):
        for segment in read_segments(os.path.join(output, name)):
            return segment["meta"]
    return {}


def recorded_model_id(output: str, recorded: dict) -> str | None:
    """The model whose tokens ``output`` already holds: from the manifests, or, for folders written before manifests
    named it, from the first sample of a recorded shard. None for an empty folder."""
    return recorded.get("model_id") or first_recorded_meta(output, recorded).get("model_id")


def check_same_model(output: str, model: Autoencoder | VideoCodec, recorded: dict | None = None) -> str:
    """Refuse to add ``model``'s tokens to a folder that holds another model's, or (video codecs) the same model's
    in groups of another length: a resumed job with a different checkpoint or ``--gop`` would otherwise leave a
    dataset whose shards disagree with each other and with its card. Returns the model's id."""
    recorded = load_manifests(output) if recorded is None else recorded
    this_model = model_id(model)
    held = recorded_model_id(output, recorded)
    if held not in (None, this_model):
        raise ValueError(f"{output} holds tokens of model {held}, and this checkpoint is model {this_model}: "
                         "encode into a new --output (or delete the folder to start over)")
    codec = clip_codec(model)
    if held is not None and is_video(codec_fields(codec)):  # video-mode samples record their group length
        gop = first_recorded_meta(output, recorded).get("gop", codec.gop)
        if gop != codec.gop:
            raise ValueError(f"{output} holds groups of {gop} frames and this run codes groups of {codec.gop}: "
                             f"resume with --gop {gop}, or encode into a new --output")
    return this_model


class EncodeRun:
    """One rank's encoding of its videos into an output folder: what is held between chunks, and where it goes.

    A video's samples are held (256 bytes a frame) until the video ends, so a shard only ever holds whole videos even
    when several decode workers interleave their videos; frames are never held beyond one batch. A finished video
    goes to the open shard, and a full shard is closed and recorded in this rank's manifest (``flush_shard``).
    ``model`` is a clip codec (``compressor.codec.clips``): per-frame models and video codecs take one path.
    """

    def __init__(self, model, output: str, videos: list[str], root: str, manifest: dict,
                 writer: ShardWriter, *, rank: int, device: str | torch.device, prior: Prior | None,
                 step: Callable[[str], None], search_steps: int, progress: bool):
        self.model, self.output, self.videos, self.root = model, output, videos, root
        self.manifest, self.writer, self.device, self.prior, self.step = manifest, writer, device, prior, step
        self.search_steps = search_steps
        self.manifest_path = os.path.join(output, f"manifest.rank-{rank}.json")
        self.signatures = {p: file_signature(p) for p in videos}  # before decoding: a file changed meanwhile is retried
        self.common = {"model_id": manifest["model_id"], "codebook_size": model.codebook_size,
                       "num_tokens": model.num_tokens, "token_layout": f"{model.grid[0]}x{model.grid[1]} row-major",
                       **codec_fields(model)}
        self.bf16 = torch.device(device).type == "cuda"  # where the codec allows it (clip_tokens)
        self.pending: list[str] = []  # videos whose samples sit in the open shard
        self.video_samples: dict[int, list[dict]] = {}  # by video: its finished segments' samples
        self.seg_tokens: dict[int, list[np.ndarray]] = {}  # by video: its open segment's tokens, a chunk an array
        self.seg_meta: dict[int, dict] = {}  # by video: its open segment's frame indices and timestamps
        self.failed: dict[int, str] = {}  # videos whose tokens the model refused: no samples, recorded as failed
        self.frames, self.t0 = 0, time.perf_counter()
        self.bar = tqdm(total=len(videos), unit="video", desc=f"encode[rank {rank}]", disable=not progress,
                        file=sys.stderr)

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def tokens(self, frames: torch.Tensor) -> np.ndarray:
        """uint8 (B, 3, H, W), whole groups from an intra frame -> uint16 (B, N), each frame's tokens checked (int64
        in [0, codebook_size)) before the cast; a frame of fewer tokens (a conditional frame) zero-padded."""
        tokens = clip_tokens(self.model, frames.to(self.device), self.search_steps, self.bf16)
        return pad_frames(tokens, self.model.num_tokens)

    def encode_chunk(self, chunk: Chunk) -> None:
        v = chunk.video
        if len(chunk.frames) and v not in self.failed:
            try:
                tokens = self.tokens(chunk.frames)
            except ValueError as e:  # e.g. a diverged model's NaN: never cast into valid-looking tokens
                self.failed[v] = f"{type(e).__name__}: {e}"
                for held in (self.seg_tokens, self.seg_meta, self.video_samples):
                    held.pop(v, None)
            else:
                self.seg_tokens.setdefault(v, []).append(tokens)
                meta = self.seg_meta.setdefault(v, {"frame_indices": [], "timestamps": []})
                meta["frame_indices"] += chunk.frame_indices
                meta["timestamps"] += chunk.timestamps
                self.frames += len(chunk.frames)
                self.bar.set_postfix(fps=f"{self.frames / (time.perf_counter() - self.t0):.1f}", refresh=False)
        if chunk.last_in_segment and self.seg_tokens.get(v):
            self.close_segment(chunk)
        if chunk.last_in_video:
            self.close_video(chunk)

    def close_segment(self, chunk: Chunk) -> None:
        """The video's open segment becomes a sample, held until the video ends."""
        meta = self.seg_meta.pop(chunk.video)
        tokens = np.concatenate(self.seg_tokens.pop(chunk.video))
        ctok, coded = None, {}
        if self.prior is not None:
            ctok = encode_segment(torch.from_numpy(tokens.astype(np.int64)), self.prior)
            coded = {"entropy_coded": {"prior": self.prior.kind, "prior_id": self.prior.prior_id(), "bytes": len(ctok)}}
        self.video_samples.setdefault(chunk.video, []).append(make_sample(tokens, {
            "source": self.rel(self.videos[chunk.video]), "segment": chunk.segment,
            "first_frame": meta["frame_indices"][0], "frame_indices": meta["frame_indices"],
            "timestamps": meta["timestamps"], "fps": chunk.info["fps"], "source_fps": chunk.info["source_fps"],
            "original_size": chunk.info["original_size"], **self.common, **coded,
            **segment_fields(self.common, len(tokens)),
        }, ctok))

    def close_video(self, chunk: Chunk) -> None:
        """The video's samples go to the open shard, and the video into this rank's manifest when the shard closes."""
        path, info = self.videos[chunk.video], {**chunk.info}
        if chunk.video in self.failed:
            info.update(status="failed", reason=self.failed.pop(chunk.video), frames=0)
        for sample in self.video_samples.pop(chunk.video, []):
            self.writer.write(sample)
            self.step("sample_written")
        self.manifest["videos"][self.rel(path)] = {**info, **self.signatures[path], "shard": None}
        self.pending.append(path)
        self.bar.update(1)
        if self.writer.full():
            self.flush_shard()

    def flush_shard(self) -> None:
        """Close the open shard (if any) and record it and its videos in this rank's manifest."""
        closed = self.writer.close(self.step)
        name = closed[0] if closed else None
        if closed:
            self.manifest["shards"][name] = closed[1]
        for p in self.pending:
            self.manifest["videos"][self.rel(p)]["shard"] = name
        self.pending.clear()
        with reporting_full_disk(self.manifest_path):
            write_json(self.manifest_path, self.manifest)
        self.step("manifest_written")


def entropy_code_refusal(model: Autoencoder | VideoCodec, prior: Prior) -> str:
    """Why ``prior`` cannot code this model's segments: it codes rows of another width. (A video codec whose
    conditional frames lie on another grid stores rows of its larger grid, which one prior's grid cannot hold.)"""
    formats = clip_codec(model).frame_formats()
    why = ""
    if len({f["num_tokens"] for f in formats.values()}) > 1:
        grids = ", ".join(f"{kind} frames {f['token_layout']}" for kind, f in formats.items())
        why = (f" (a video codec whose conditional frames lie on another grid: {grids}; entropy coding such clips is"
               " not supported)")
    return (f"the {prior.kind} prior codes {prior.num_tokens} tokens a frame; this model stores {model.num_tokens}"
            f"{why}")


def encode_videos(model: Autoencoder | VideoCodec, inputs: list[str], output: str, *, segment_seconds: float = 60.0,
                  fps: float | None = None, batch_size: int = 32, num_workers: int = 2, maxcount: int = 64,
                  rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                  progress: bool = True, prior: Prior | None = None,
                  step_hook: Callable[[str], None] | None = None, search_steps: int = 0) -> dict:
    """Encode every video under ``inputs`` into ``output``; returns this rank's summary.

    ``search_steps > 0`` searches each frame's tokens for the decoder (``Autoencoder.encode``): the same format.

    A ``VideoCodec`` writes video-mode samples (``compressor.latents.groups``): each segment is coded in groups of
    ``model.gop`` frames from its first frame, so it decodes alone. Batches are whole groups (``batch_size`` is
    rounded up to a multiple of ``gop``), so no group is split between two calls of ``encode_clip``.

    With a ``prior``, each sample also carries its segment entropy-coded (``tokens.ctok``, see
    ``compressor.entropy``).
    """
    if prior is not None and prior.num_tokens != model.num_tokens:
        raise ValueError(entropy_code_refusal(model, prior))
    videos, root = find_videos(inputs)
    check_writable(output)
    recorded = read_manifest(output) or {"videos": {}, "shards": {}}
    taken = set(recorded["shards"])  # shard names never reused, not even those of shards deleted since
    recorded = forget_missing_shards(output, recorded)
    # Sources are relative to the root of the folder's first run, whatever parent folder this run was given: a
    # video keeps its key, so a resume from videos/ after a run on videos/sub/ skips what is done ("../x.mp4" names
    # a video outside that root).
    root = recorded.get("root") or root
    check_unique_keys([os.path.relpath(p, root) for p in videos])
    this_model = check_same_model(output, model, recorded)
    remove_unrecorded(output, rank, world_size, recorded["shards"])
    done = recorded["videos"]
    mine = [p for i, p in enumerate(videos)
            if i % world_size == rank and not is_done(done.get(os.path.relpath(p, root)), p)]
    manifest_path = os.path.join(output, f"manifest.rank-{rank}.json")
    manifest = {"videos": {}, "shards": {}}
    if os.path.exists(manifest_path):
        with open_checked(manifest_path, MAX_MANIFEST_BYTES) as f:
            manifest = forget_missing_shards(output, load_json(f.read()))
    manifest["model_id"], manifest["root"] = this_model, root

    model = clip_codec(model, batch_size).to(device).eval()
    if search_steps and not getattr(model, "supports_search", False):
        raise ValueError("token search (search_steps) is for per-frame models; a video codec encodes its clips "
                         "as they are")
    batch_size = -(-batch_size // model.gop) * model.gop  # whole groups
    if prior is not None and prior.model_id != this_model:
        raise ValueError(f"the {prior.kind} prior was trained on tokens of model {prior.model_id}, not of this "
                         f"checkpoint ({this_model}); train one with python -m compressor.tools.entropy train")
    workers = min(num_workers, len(mine))
    loader = DataLoader(DecodedChunks(mine, model.image_size, batch_size, segment_seconds, fps),
                        batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)
    run = EncodeRun(model, output, mine, root, manifest, ShardWriter(output, rank, world_size, maxcount, taken=taken),
                    rank=rank, device=device, prior=prior, step=step_hook or (lambda name: None),
                    search_steps=search_steps, progress=progress)
    try:
        for chunk in loader:
            run.encode_chunk(chunk)
        run.flush_shard()
    except DiskFullError:
        # Nothing this run could not record may stay to be read as valid: its partial shard, and a finished one
        # whose manifest entry could not be written. (Deleting needs no space.)
        remove_unrecorded(output, rank, world_size, load_manifests(output)["shards"])
        raise
    run.bar.close()
    seconds = time.perf_counter() - run.t0
    return {"rank": rank, "videos": len(mine), "frames": run.frames, "seconds": seconds,
            "frames_per_s": run.frames / max(seconds, 1e-9), "manifest": manifest}
