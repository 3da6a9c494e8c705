"""Train priors, code token shards, and measure bytes per frame (the library is ``compressor.entropy``).

    # fit all three priors on encode.py's shards; they are saved beside the checkpoint as prior-<kind>.pt
    python -m compressor.tools.entropy train --checkpoint runs/x/model.pt --input latents/train --val-input latents/val
    # or on commaVQ-layout .npy files (any codebook size; no checkpoint: the format comes from the files)
    python -m compressor.tools.entropy train --input npy/train --val-input npy/val --output priors/
    # write entropy-coded copies of token shards (each segment decoded back and compared before it is kept);
    # without --prior with the adaptive coder, which needs no training
    python -m compressor.tools.entropy code --input latents/val --output latents-coded
    python -m compressor.tools.entropy code --prior runs/x/prior-temporal.pt --input latents/val --output latents-coded
    # bits per token, bytes per frame and speed of the adaptive coder and every prior given against lzma and zstd
    # (commaVQ's baseline layout too); a folder of commaVQ .npy files works the same, with or without --prior
    python -m compressor.tools.entropy report --prior runs/x/prior-*.pt --input latents/val --output reports/entropy
    python -m compressor.tools.entropy report --input commavq-npy/ --output reports/entropy-commavq
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import webdataset as wds

from compressor.entropy.adaptive import AdaptivePrior
from compressor.entropy.coding import digit_radices
from compressor.entropy.token_prior import MAX_CODES
from compressor.entropy.fit import check_segments, fit_static, fit_temporal, mean_bits_per_token
from compressor.entropy.priors import KINDS, Prior
from compressor.entropy.stream import FITTED_KINDS, PRIORS, decode_segment, encode_segment, load_prior, save_prior
from compressor.tools.entropy_report import token_format
from compressor.latents.find import check_output_apart, expand_urls
from compressor.latents.samples import make_sample
from compressor.latents.shards import read_segments
from compressor.utils import atomic_write


def load_segments(shards, prior: Prior | None = None) -> list[dict]:
    """Every segment in the shards, in order: ``{"tokens": int64 (T, N), "meta": dict}``."""
    return [seg for url in expand_urls(shards) for seg in read_segments(url, prior=prior)]


def train(args) -> None:
    segments = load_segments(args.input)
    if args.checkpoint:
        from compressor.codec.autoencoder import load
        from compressor.codec.checkpoint import model_id

        model = load(args.checkpoint)
        levels = getattr(model.quantizer, "levels", None)
        common = {"codebook_size": model.codebook_size, "grid": model.grid, "model_id": model_id(model)}
        out_dir = args.output or os.path.dirname(os.path.abspath(args.checkpoint))
    else:  # tokens of another tokenizer (commaVQ): the format comes from the segments' metadata
        if not args.output:
            raise ValueError("without --checkpoint, give --output: the folder for the prior files")
        levels, common, out_dir = None, token_format(segments), args.output
    common["radices"] = digit_radices(common["codebook_size"], levels)
    num_tokens = common["grid"][0] * common["grid"][1]
    check_segments(segments, common["model_id"], num_tokens, common["codebook_size"])
    val = load_segments(args.val_input) if args.val_input else None
    if val:
        check_segments(val, common["model_id"], num_tokens, common["codebook_size"])
    os.makedirs(out_dir, exist_ok=True)
    frames = sum(len(s["tokens"]) for s in segments)
    print(f"{frames} training frames in {len(segments)} segments; model {common['model_id']}, digits "
          f"{common['radices']}")
    for kind in args.kinds:
        if kind == "token":  # whole tokens: no digits, and its own width (--token-dim)
            fmt = {k: v for k, v in common.items() if k != "radices"}
            prior = PRIORS[kind](**fmt, context=args.context, dim=args.token_dim, depth=args.depth)
        else:
            arch = {k: getattr(args, k) for k in ("context", "dim", "depth", "position")} if kind == "temporal" else {}
            prior = PRIORS[kind](**common, **arch)
        if kind in ("temporal", "token"):
            summary = fit_temporal(prior, segments, val, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   minutes=args.minutes, seed=args.seed,
                                   weight_decay=args.weight_decay, log_every=args.log_every)
        else:
            fit_static(prior, segments)
            summary = {"val_bits_per_token": round(mean_bits_per_token(prior, val), 4)} if val else {}
        summary["train_frames"] = frames
        path = os.path.join(out_dir, f"prior-{kind}.pt")
        save_prior(prior, path, summary=json.dumps(summary))
        print(f"{kind}: saved {path} (prior id {prior.prior_id()})"
              + (f", val {summary['val_bits_per_token']:.3f} bits/token" if val else ""))


def code(args) -> None:
    if args.prior:
        prior = load_prior(args.prior)
    else:  # the adaptive coder, built for the tokens' own format
        fmt = token_format(load_segments(args.input))
        prior = AdaptivePrior(fmt["codebook_size"], fmt["grid"], fmt["model_id"])
    urls = expand_urls(args.input)
    check_output_apart(urls, args.output)
    names = {url: os.path.splitext(os.path.basename(url))[0] + ".tar" for url in urls}  # a commaVQ .npy -> a shard
    if len(set(names.values())) < len(names):
        twice = sorted(n for n in names.values() if list(names.values()).count(n) > 1)[0]
        raise ValueError(f"two inputs would be written as {twice}: "
                         + ", ".join(u for u, n in names.items() if n == twice) + "; code them into separate folders")
    os.makedirs(args.output, exist_ok=True)
    frames = coded = 0
    for url, name in names.items():
        with atomic_write(os.path.join(args.output, name)) as tmp, wds.TarWriter(tmp, mtime=0) as sink:
            for i, seg in enumerate(read_segments(url)):
                data = encode_segment(seg["tokens"], prior)
                if not torch.equal(decode_segment(data, prior, len(seg["tokens"])), seg["tokens"]):  # never keep a stream that lies
                    raise RuntimeError(f"{url}: segment {i} did not decode to its tokens")
                meta = {"source": name, "segment": i, **seg["meta"],
                        "entropy_coded": {"prior": prior.kind, "prior_id": prior.prior_id(), "bytes": len(data)}}
                sink.write(make_sample(seg["tokens"].numpy(), meta, ctok=data, plain=False))
                frames += len(seg["tokens"])
                coded += len(data)
    print(f"{frames} frames coded with the {prior.kind} prior: {coded / max(frames, 1):.2f} bytes/frame "
          f"(headers included), written to {args.output}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.entropy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fit priors on token shards")
    t.add_argument("--checkpoint", help="the compressor that made the tokens (model.pt or .ckpt); without it, the "
                   "codebook and grid come from the tokens' metadata (commaVQ .npy files, our exports)")
    t.add_argument("--input", required=True, nargs="+",
                   help="encode.py output or commaVQ-layout .npy files: directories, globs, .tar or .npy files")
    t.add_argument("--val-input", nargs="+", help="held-out token shards to report bits/token on")
    t.add_argument("--kinds", nargs="+", choices=FITTED_KINDS, default=list(KINDS),
                   help="priors to fit (default: the three digit-wise ones; 'token' is the whole-token prior (d), "
                   f"for codebooks up to {MAX_CODES} codes)")
    t.add_argument("--output", help="where prior-<kind>.pt go (default: beside the checkpoint)")
    t.add_argument("--steps", type=int, default=1000, help="temporal and token priors: optimiser steps")
    t.add_argument("--minutes", type=float, default=None, help="temporal prior: stop after this long")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--context", type=int, default=2, help="temporal prior: previous frames seen")
    t.add_argument("--dim", type=int, default=48, help="temporal prior: width")
    t.add_argument("--depth", type=int, default=2, help="temporal prior: residual conv blocks")
    t.add_argument("--position", action="store_true", help="temporal prior: add a per-position embedding")
    t.add_argument("--token-dim", type=int, default=64, help="token prior: width")
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=250, help="temporal prior: steps between log lines")
    c = sub.add_parser("code", help="write entropy-coded copies of token shards")
    c.add_argument("--prior", help="a fitted prior file (default: the adaptive coder, which needs none)")
    c.add_argument("--input", required=True, nargs="+", help="token shards to code")
    c.add_argument("--output", required=True, help="folder for the coded shards")
    r = sub.add_parser("report", help="bits/token, bytes/frame and speed per prior vs lzma and zstd")
    r.add_argument("--prior", nargs="*", default=[], help="fitted prior files (the adaptive coder is always measured)")
    r.add_argument("--input", required=True, nargs="+", help="token shards to measure on (the val clips)")
    r.add_argument("--output", default=None, help="directory for report.json and report.md")
    r.add_argument("--constriction", action="store_true", help="also code the temporal prior with constriction")
    r.add_argument("--adaptive-versions", type=int, nargs="+", default=None,
                   help="adaptive coder versions to measure (default: the current one; older ones decode old segments)")
    args = ap.parse_args(argv)
    try:
        if args.command == "train":
            train(args)
        elif args.command == "code":
            code(args)
        else:
            from compressor.tools.entropy_report import report

            report(args.prior, load_segments(args.input), args.output, inputs=args.input,
                   with_constriction=args.constriction,
                   **({"adaptive_versions": tuple(args.adaptive_versions)} if args.adaptive_versions else {}))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
