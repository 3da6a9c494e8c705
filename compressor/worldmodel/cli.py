"""``compressor-world-model`` (``python -m compressor.worldmodel``): train, score, generate, probe.

    compressor-world-model train --config configs/world-model/reference.yaml --output runs/world-model
    compressor-world-model score --checkpoint runs/world-model/world_model.pt --compressor ../shared/models/recipe-48k \\
        --output reports/world-model
    compressor-world-model generate --checkpoint runs/world-model/world_model.pt \\
        --compressor ../shared/models/recipe-48k --output reports/world-model/futures
    compressor-world-model probe --input ../shared/latents/recipe-48k --output reports/world-model/probe
    compressor-world-model bench --output reports/world-model
    compressor-world-model bench-search --checkpoint RUN/world_model.pt --output reports/world-model

A ``--config`` YAML sets any option by its name (``head: digits``, ``max_steps: 3000``); repeated, later files
overlay earlier ones (``--config configs/world-model/reference.yaml --config configs/world-model/context-8.yaml``);
the command line wins.
``train`` into an ``--output`` holding ``checkpoints/last.ckpt`` resumes that run (``--no-resume``: start afresh);
``--max-minutes`` counts from the invocation (compressor/worldmodel/module.py says how the schedule continues).
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import time
from dataclasses import fields

import torch

from compressor.codec.layers import ATTENTION_KERNELS
from compressor.worldmodel.data import HOLDOUTS, read_segments, repeat_share, split_holdout, unigram_counts
from compressor.worldmodel.model import HEADS, WorldModelConfig

LATENTS = "../shared/latents/recipe-48k"
# The probe's fixed budget: small enough for minutes on 2 cores, the same for every tokenizer it compares.
PROBE = {"dim": 128, "depth": 2, "heads": 4, "context_frames": 4, "dropout": 0.1, "max_steps": 300, "batch_size": 8,
         "lr": 2e-3, "warmup_steps": 30, "val_every": 100}


def _model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--head", choices=sorted(HEADS), default="full",
                    help="full softmax over the codebook; digits: one independent softmax per FSQ digit; "
                         "ar-digits: the digits one after another, each given those before (exact, cheap)")
    ap.add_argument("--digit-hidden", type=int, default=128, help="the ar-digits head's hidden width")
    ap.add_argument("--context-frames", type=int, default=4, help="T: frames per window (the first is context only)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--no-copy-hint", dest="copy_hint", action="store_false",
                    help="do not embed the previous frame's token at the predicted position (commaVQ's plain GPT)")
    ap.add_argument("--copy-pointer", action="store_true",
                    help="mix the head with copies of the previous frame's tokens around the predicted position "
                         "(configs/world-model/pointer.yaml)")


def _train_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--train", nargs="+", default=[f"{LATENTS}/train"], help="training latents")
    ap.add_argument("--holdout", choices=HOLDOUTS, default="camera",
                    help="what early stopping holds out of the train latents: whole cameras (owner__repo of the "
                         "video names: new scenes, like val-new-cameras) or whole videos (the first two runs')")
    ap.add_argument("--holdout-fraction", type=float, default=0.1,
                    help="camera: the most frames held out (a share of all); video: the share of videos")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time too")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=150, help="steps between early-stopping checks")
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--precision", default="32-true", help="32-true or bf16-mixed (measure: see docs/world-model.md)")
    ap.add_argument("--stride", type=int, default=1, help="frames between training window starts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention", choices=ATTENTION_KERNELS, default="sdpa",
                    help="attention kernel (speed only; matmul is faster in bf16 on AMX CPUs: "
                         "reports/world-model/bench-step.md)")
    ap.add_argument("--checkpoint-minutes", type=float, default=3.0,
                    help="wall minutes between saves of OUTPUT/checkpoints/last.ckpt")
    ap.add_argument("--no-resume", dest="resume", action="store_false",
                    help="start afresh even where OUTPUT holds checkpoints/last.ckpt (default: resume from it)")


def _val_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--val", nargs="+", default=None, help=f"val latent folders (default: {LATENTS}/val*)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="compressor-world-model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the world model")
    p.add_argument("--config", action="append",
                   help="YAML of option defaults; repeat to overlay (later files win), e.g. reference.yaml then "
                        "context-8.yaml")
    p.add_argument("--output", default="runs/world-model")
    _model_args(p)
    _train_args(p)
    p = sub.add_parser("score", help="score a trained model on the val sets against the baselines")
    p.add_argument("--checkpoint", required=True, help="world_model.pt")
    p.add_argument("--train", nargs="+", default=[f"{LATENTS}/train"], help="latents to fit unigram and alpha on")
    _val_args(p)
    p.add_argument("--compressor", help="the compressor that made the tokens (Hub folder, .pt): pixel scores")
    p.add_argument("--rollout-stride", type=int, default=8, help="frames between rollout starts (pixel scores)")
    p.add_argument("--no-adaptive", action="store_true", help="skip the adaptive coder (slow on long sets)")
    p.add_argument("--output", default="reports/world-model")
    p = sub.add_parser("generate", help="sampled futures of every val clip: PNG strips and mp4s")
    p.add_argument("--checkpoint", required=True)
    _val_args(p)
    p.add_argument("--compressor", required=True)
    p.add_argument("--output", default="reports/world-model/futures")
    p.add_argument("--context", type=int, default=None,
                   help="real frames given (default: the model's context frames - 1, all it attends to)")
    p.add_argument("--frames", type=int, default=16, help="frames generated")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=4)
    p = sub.add_parser("probe", help="learnability of any latent folder: a fixed small model and budget")
    p.add_argument("--input", help="a folder holding train/ and val*/ latent folders")
    p.add_argument("--train", nargs="+", help="training latents (instead of INPUT/train)")
    _val_args(p)
    p.add_argument("--max-steps", type=int, default=PROBE["max_steps"], help="the budget; keep it to compare")
    p.add_argument("--head", choices=sorted(HEADS), default="full")
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--output", default="reports/world-model/probe")
    p = sub.add_parser("bench", help="training-step CPU time by head and attention kernel (bench-step.json/md)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context-frames", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="reports/world-model")
    p = sub.add_parser("bench-search", help="ar-digits argmax/sampling speed: enumeration against search")
    p.add_argument("--checkpoint", required=True, help="a trained ar-digits world_model.pt")
    p.add_argument("--val", default=f"{LATENTS}/val", help="latents whose windows give the states")
    p.add_argument("--windows", type=int, default=2, help="windows (of T frames) whose states are timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="reports/world-model")
    return ap


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = _parser()
    args = ap.parse_args(argv)
    if getattr(args, "config", None):
        import yaml

        sub = ap._subparsers._group_actions[0].choices[args.command]
        known = {a.dest for a in sub._actions}
        defaults = {}
        for path in args.config:  # overlays: a later file's options replace an earlier one's
            with open(path) as f:
                layer = yaml.safe_load(f) or {}
            unknown = set(layer) - known
            if unknown:
                raise SystemExit(f"{path}: unknown options {sorted(unknown)}")
            defaults.update(layer)
        sub.set_defaults(**defaults)
        args = ap.parse_args(argv)
    return args


def _val_folders(args: argparse.Namespace, root: str = LATENTS) -> list[str]:
    return args.val or sorted(d for d in glob.glob(os.path.join(root, "val*")) if os.path.isdir(d))


def _config(args: argparse.Namespace, fmt) -> WorldModelConfig:
    names = {f.name for f in fields(WorldModelConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return WorldModelConfig(codebook_size=fmt.codebook_size, num_tokens=fmt.num_tokens, radices=fmt.radices,
                            grid=list(fmt.grid), **given)


def cmd_train(args: argparse.Namespace) -> dict:
    from compressor.worldmodel.module import train

    segments, fmt = read_segments(args.train)
    fit, holdout = split_holdout(segments, args.holdout_fraction, args.holdout)
    config = _config(args, fmt)
    t0 = time.perf_counter()
    _, facts = train(fit, holdout, fmt, config, args.output, max_steps=args.max_steps, max_minutes=args.max_minutes,
                     batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                     warmup_steps=args.warmup_steps, val_every=args.val_every, patience=args.patience,
                     precision=args.precision, seed=args.seed, stride=args.stride, attention=args.attention,
                     checkpoint_minutes=args.checkpoint_minutes, resume=args.resume)
    facts["seconds"] = time.perf_counter() - t0
    facts["steps_per_s"] = facts["steps"] / facts["seconds"]
    print(f"trained {facts['steps']} steps in {facts['seconds']:.0f} s ({facts['steps_per_s']:.2f} steps/s); "
          f"best held-out bits/token {facts.get('best_val_bits_per_token', float('nan')):.3f}; "
          f"saved {os.path.join(args.output, 'world_model.pt')}")
    return facts


def score_sets(model, fmt, train_folders: list[str], val_folders: list[str], output: str, codec=None,
               adaptive: bool = True, rollout_stride: int = 8, extra: dict | None = None) -> dict:
    """Score ``model`` on each val folder against the baselines fit on ``train_folders``; writes report.json/md."""
    from compressor.benchmark import write_report
    from compressor.worldmodel import score

    train_segments, train_fmt = read_segments(train_folders)
    if train_fmt.model_id != fmt.model_id or train_fmt.codebook_size != fmt.codebook_size:
        raise ValueError(f"{train_folders} hold tokens of model {train_fmt.model_id}, the world model was trained on "
                         f"{fmt.model_id}'s")
    unigram = score.unigram_bits(unigram_counts(train_segments, fmt.codebook_size))
    alpha = repeat_share(train_segments)
    sets = []
    for folder in val_folders:
        segments, val_fmt = read_segments(folder)
        if val_fmt.model_id != fmt.model_id:
            raise ValueError(f"{folder} holds tokens of model {val_fmt.model_id}, not {fmt.model_id}")
        t0 = time.perf_counter()
        m = score.model_bits(model, segments)
        b = score.baseline_bits(segments, unigram, alpha, fmt, adaptive)
        pixels = score.pixel_scores(model, codec, segments, rollout_stride=rollout_stride) if codec else None
        s = score.summarise(os.path.basename(os.path.normpath(folder)), m, b, fmt.num_tokens, pixels)
        s["folder"], s["seconds"] = folder, time.perf_counter() - t0
        sets.append(s)
    result = {"model": model.config.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
              "token_model_id": fmt.model_id, "copy_alpha": alpha, "train": train_folders, "sets": sets,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", **(extra or {})}
    header = (f"# World model on held-out tokens\n\nModel: {result['parameters'] / 1e6:.2f}M parameters, "
              f"{model.config.head} head, {model.config.context_frames} frames of context; tokens of compressor "
              f"{fmt.model_id}; unigram and copy alpha ({alpha:.3f}) fit on {', '.join(train_folders)}.")
    md = score.markdown(sets, header)
    print(md)
    write_report(output, "report", result, md)
    return result


def cmd_score(args: argparse.Namespace) -> dict:
    from compressor.worldmodel.module import load

    model, fmt, extra = load(args.checkpoint)
    codec = _codec(args.compressor, fmt) if args.compressor else None
    return score_sets(model, fmt, args.train, _val_folders(args), args.output, codec, not args.no_adaptive,
                      args.rollout_stride, {"checkpoint": args.checkpoint, "training": extra})


def _codec(path: str, fmt):
    import compressor
    from compressor.codec.checkpoint import model_id

    codec = compressor.load(path).eval()
    if fmt.model_id and model_id(codec) != fmt.model_id:
        raise ValueError(f"{path} is model {model_id(codec)}; the tokens are of model {fmt.model_id}")
    return codec


def cmd_generate(args: argparse.Namespace) -> list[dict]:
    from compressor.worldmodel.generate import futures
    from compressor.worldmodel.module import load

    model, fmt, _ = load(args.checkpoint)
    codec = _codec(args.compressor, fmt)
    written = []
    for folder in _val_folders(args):
        segments, _ = read_segments(folder)
        out = os.path.join(args.output, os.path.basename(os.path.normpath(folder)))
        context = args.context or model.config.context_frames - 1
        written += futures(model, codec, segments, out, context, args.frames, args.temperature, args.seed,
                           args.fps)
    for w in written:
        print(w["png"])
    return written


def cmd_probe(args: argparse.Namespace) -> dict:
    from compressor.worldmodel.module import train

    train_folders = args.train or [os.path.join(args.input, "train")]
    val = _val_folders(args, args.input or "")
    if not val:
        raise SystemExit("probe: no val folder (give --val, or --input holding val*/)")
    segments, fmt = read_segments(train_folders)
    fit, holdout = split_holdout(segments, 0.1, "video")  # as when the probe was fixed: its numbers stay comparable
    model_keys = {f.name for f in fields(WorldModelConfig)}
    config = WorldModelConfig(codebook_size=fmt.codebook_size, num_tokens=fmt.num_tokens, radices=fmt.radices,
                              grid=list(fmt.grid), head=args.head, **{k: v for k, v in PROBE.items() if k in model_keys})
    t0 = time.perf_counter()
    model, facts = train(fit, holdout, fmt, config, os.path.join(args.output, "run"), max_steps=args.max_steps,
                         batch_size=PROBE["batch_size"], lr=PROBE["lr"], warmup_steps=PROBE["warmup_steps"],
                         val_every=PROBE["val_every"], patience=10**6, resume=False)
    facts["seconds"] = time.perf_counter() - t0
    return score_sets(model, fmt, train_folders, val, args.output, None, not args.no_adaptive,
                      extra={"probe": {**PROBE, "max_steps": args.max_steps}, "training": facts})


def main(argv: list[str] | None = None):
    """Run one command and return what it produced (facts, scores, files), for callers in Python."""
    args = _parse(argv)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    if args.command in ("bench", "bench-search"):
        from compressor.worldmodel import bench

        return (bench.main if args.command == "bench" else bench.search)(args)
    return {"train": cmd_train, "score": cmd_score, "generate": cmd_generate, "probe": cmd_probe}[args.command](args)


def console(argv: list[str] | None = None) -> int:
    """The console script: exit status 0 on success (``sys.exit(main())`` would print a command's result dict to
    stderr and exit 1)."""
    main(argv)
    return 0
