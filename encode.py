"""Encode video collections into webdataset shards of 224-byte frame tokens.

    python encode.py --checkpoint runs/x/model.pt --input /videos --output /latents
    torchrun --nproc_per_node 8 encode.py --checkpoint ... --input ... --output ...    # one rank per GPU/process
    python encode.py ... --entropy-code    # also store each segment entropy-coded (adaptive coder, no prior file)
    python encode.py ... --entropy-code --prior runs/x/prior-temporal.pt    # or with a fitted prior

A video codec (``video.pt`` from ``configs/video-224B.yaml``) writes video-mode latents, with no flag: each segment
is coded in groups of the codec's ``gop`` frames (``--gop`` changes it; an intra frame, then conditional frames), and
each sample's json says which frames are intra (``frame_types``) and how many tokens each type holds
(``frame_formats``).

Re-running the same command resumes: finished videos are skipped, partial shards are redone. The output folder
gets manifest.json and a dataset card, README.md (model, preprocessing, token layout, counts, how to read it).
One run writes a folder at a time: a second run into it is refused while the first holds its lock (.encode.lock).
"""

import argparse
import math
import os
import sys

import torch

from compressor.codec.checkpoint import model_id
from compressor.codec.clips import clip_codec
from compressor.codec.video import MAX_GOP, load_codec
from compressor.entropy.adaptive import AdaptivePrior
from compressor.entropy.stream import load_prior
from compressor.utils import rank_world
from compressor.latents.card import write_card
from compressor.latents.manifest import write_merged_manifest
from compressor.latents.pipeline import check_same_model, encode_videos, entropy_code_refusal, find_videos
from compressor.latents.samples import DamagedShardError
from compressor.latents.writer import (DiskFullError, OutputLockedError, check_writable, lock_output,
                                       reporting_full_disk)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="model.pt, a train.py .ckpt, a Hub folder, or a video codec (video.pt: video-mode latents)")
    ap.add_argument("--input", required=True, nargs="+", help="directories (searched recursively), globs, files, @list.txt")
    ap.add_argument("--output", required=True, help="output directory for latents-*.tar and manifest.json")
    ap.add_argument("--segment-seconds", type=float, default=60.0, help="segment length (a sample never spans videos)")
    ap.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: keep every frame)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="decode worker processes")
    ap.add_argument("--maxcount", type=int, default=64, help="segments per shard")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--entropy-code", action="store_true",
                    help="also store each segment entropy-coded (tokens.ctok) with a prior from compressor.entropy")
    ap.add_argument("--prior", default=None,
                    help="fitted prior file for --entropy-code (default: the adaptive coder, which needs none)")
    ap.add_argument("--strict", action="store_true", help="exit non-zero if any video failed or was truncated")
    ap.add_argument("--gop", type=int, default=None,
                    help="video codecs: frames per group (an intra frame, then conditional frames); default: the "
                         "group saved in the codec")
    ap.add_argument("--search-steps", type=int, default=0,
                    help="encode-time token search (FSQ models): tokens this model's decoder reconstructs better, same "
                         "format and bytes, about 2x the decoder's cost per step; 0: plain encode")
    args = ap.parse_args(argv)
    # A NaN, infinite, zero or negative rate would loop forever or cut nothing into segments.
    for flag, value in [("--segment-seconds", args.segment_seconds), ("--fps", args.fps)]:
        if value is not None and not (math.isfinite(value) and value > 0):
            ap.error(f"{flag} must be a positive number of {'seconds' if flag[2] == 's' else 'frames a second'}, "
                     f"got {value}")
    for flag, value in [("--batch-size", args.batch_size), ("--maxcount", args.maxcount)]:
        if value < 1:
            ap.error(f"{flag} must be at least 1, got {value}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world = rank_world()  # torchrun's RANK / WORLD_SIZE: the process group starts below
    # Fail before any work on a bad checkpoint or input.
    if not os.path.exists(args.checkpoint):
        sys.exit(f"error: checkpoint not found: {args.checkpoint}")
    try:
        model = load_codec(args.checkpoint)
    except Exception as e:
        sys.exit(f"error: cannot load checkpoint {args.checkpoint}: {type(e).__name__}: {e}")
    model = clip_codec(model, args.batch_size)  # a per-frame model codes clips in groups of one
    if args.gop is not None:
        if hasattr(model, "bytes_per_frame"):  # every frame of one size: each coded alone, as an intra frame
            sys.exit(f"error: --gop is for video codecs; {args.checkpoint} is a per-frame model (every frame is intra)")
        if not 1 <= args.gop <= MAX_GOP:
            sys.exit(f"error: --gop must be in [1, {MAX_GOP}], got {args.gop}")
        model.gop = args.gop
    if args.search_steps and not getattr(model, "supports_search", False):
        sys.exit(f"error: --search-steps is for per-frame models; {args.checkpoint} is a video codec")
    prior = None
    if args.entropy_code and args.prior is None:  # the adaptive prior: no file, learns each segment as it codes it
        prior = AdaptivePrior(model.codebook_size, model.grid, model_id(model))
    elif args.entropy_code:
        prior_path = args.prior
        if not os.path.exists(prior_path):
            sys.exit(f"error: prior not found: {prior_path} (train one with python -m compressor.tools.entropy "
                     "train, or leave out --prior for the adaptive coder)")
        try:
            prior = load_prior(prior_path)
        except Exception as e:
            sys.exit(f"error: cannot load prior {prior_path}: {type(e).__name__}: {e}")
        if prior.model_id != model_id(model):
            sys.exit(f"error: {prior_path} is a prior for model {prior.model_id}, not for {args.checkpoint} "
                     f"({model_id(model)})")
    if prior is not None and prior.num_tokens != model.num_tokens:  # before any video is read, not mid-run
        sys.exit(f"error: --entropy-code: {entropy_code_refusal(model, prior)}")
    try:
        find_videos(args.input)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    try:
        check_writable(args.output)
    except PermissionError as e:
        sys.exit(f"error: {e}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    # One run per output folder: rank 0 takes the lock for the whole job and every rank learns whether it did.
    lock, refusal = None, [None]
    if rank == 0:
        try:
            lock = lock_output(args.output)
        except OutputLockedError as e:
            refusal = [str(e)]
    if world > 1:
        torch.distributed.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        sys.exit(f"error: {refusal[0]}")
    try:  # held until the merged manifest and the card are written; released on any exit (in-process callers too)
        return encode_locked(args, model, prior, rank, world, device)
    finally:
        if lock is not None:
            lock.close()


def encode_locked(args: argparse.Namespace, model, prior, rank: int, world: int, device: str) -> int:
    """The run itself, under the output folder's lock: encode, merge the manifests, write the card, report."""
    try:
        check_same_model(args.output, model)  # under the lock: the manifests cannot change meanwhile
    except (ValueError, DamagedShardError) as e:
        sys.exit(f"error: {e}")

    try:
        summary = encode_videos(model, args.input, args.output, segment_seconds=args.segment_seconds, fps=args.fps,
                                batch_size=args.batch_size, num_workers=args.workers, maxcount=args.maxcount,
                                rank=rank, world_size=world, device=device, prior=prior,
                                search_steps=args.search_steps)
    except DiskFullError as e:
        sys.exit(f"error: {e}")
    print(f"rank {rank}: {summary['frames']} frames from {summary['videos']} videos in {summary['seconds']:.1f} s "
          f"({summary['frames_per_s']:.1f} frames/s)", file=sys.stderr)
    if world > 1:
        torch.distributed.barrier()
    status = 0
    if rank == 0:
        try:
            merged = write_merged_manifest(args.output, args.input)
            with reporting_full_disk(os.path.join(args.output, "README.md")):
                write_card(args.output, model, merged, args.segment_seconds)  # what it holds, how to read it
        except DiskFullError as e:
            sys.exit(f"error: {e}")
        counts: dict[str, int] = {}
        for entry in merged["videos"].values():
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        print(f"{len(merged['videos'])} videos in {args.output}/manifest.json: "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for rel, entry in sorted(merged["videos"].items()):
            if entry["status"] != "ok":
                print(f"  {entry['status']}: {rel}: {entry['reason']}")
        if args.strict and any(s != "ok" for s in counts):
            status = 1
    if world > 1:
        torch.distributed.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
