"""Experiment protocol: train to a budget counted in images, evaluate every val clip, keep the record as JSON.

    python -m compressor.tools.experiments run NAME --config configs/cpu-vit-224B-aug.yaml configs/experiments/proxy.yaml \\
        --images 16000 --shards SHARD_DIR [--set model.loss.mse_weight=0.5 ...]
    python -m compressor.tools.experiments run NAME ... --flops 2.3e14 ...   # shapes at equal training compute
    python -m compressor.tools.experiments table          # reports/experiments/table.md and curves.png

A budget is images seen (steps x batch), never wall-clock, so that a run's result does not depend on what else
shared the machine; training seconds are recorded beside it for throughput. ``run`` trains with ``train.py fit`` in
a subprocess (resumed from ``last.ckpt`` when the run directory has one), then evaluates the exported model on
every frame of every ``val`` clip with ``compressor.tools.evaluate``. ``reports/experiments/NAME/`` receives
``config.yaml`` (the resolved LightningCLI config), ``curve.json`` (validation metrics against images seen) and
``result.json`` (per-clip PSNR, clip mean, codebook use, throughput, provenance). Weights stay in ``runs/`` (or
``--runs DIR``).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

from compressor.training.cli import CONFIGS, cli
from compressor.utils import atomic_write, num_params, write_json

REPORTS = "reports/experiments"
RUNS = "runs/experiments"
DEFAULT_TRAIN_VIDEOS = 21  # the train clips of ../shared/dashcam: runs on other clips say how many in the table
ROOT = os.path.dirname(CONFIGS)  # the repository


def _resolve(configs: list[str], overrides: list[str]):
    args = [a for c in configs for a in ("--config", c)] + [f"--{o}" for o in overrides] + ["--trainer.logger=false"]
    return cli(args, run=False)


def budget(configs: list[str], overrides: list[str], images: int) -> tuple[int, int, int]:
    """(steps, batch size, devices) for a budget of ``images``, from the config ``train.py`` resolves: base, then
    ``configs``, then ``key=value`` overrides. The batch size and the device count are the Trainer's and the data
    module's own, so a change to ``configs/base.yaml`` moves every budget with it."""
    resolved = _resolve(configs, overrides)
    batch_size = resolved.datamodule.hparams.batch_size
    devices = resolved.trainer.num_devices * resolved.trainer.num_nodes
    return math.ceil(images / (batch_size * devices)), batch_size, devices


def flops_per_image(configs: list[str], overrides: list[str]) -> float:
    """Training FLOPs per image (forward, loss, backward) of the model the config resolves to, at its image size."""
    from compressor.training.perf import train_flops_per_image

    return train_flops_per_image(_resolve(configs, overrides).model.autoencoder)


def images_for_flops(configs: list[str], overrides: list[str], flops: float) -> int:
    """The images budget that spends ``flops`` training FLOPs on this model: shapes compared at equal compute."""
    return math.ceil(flops / flops_per_image(configs, overrides))


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def train_data(shards: str) -> dict:
    """What a run trained on: the shards folder and its number of train videos (``train-*.tar`` groups), so that
    runs on other clips are told apart in the table, e.g. the 21 ``train`` clips of ``../shared/dashcam`` against
    those plus the 15 of ``../shared/dashcam-extra``."""
    videos = {os.path.basename(p).removeprefix("train-").rsplit("-", 1)[0]
              for p in glob.glob(os.path.join(shards, "train-*.tar"))}
    return {"shards": os.path.abspath(shards), "train_videos": len(videos)}


def run(name: str, configs: list[str], images: int, shards: str, videos: list[str], overrides: list[str],
        force: bool = False, branch_from: str | None = None, other_sets: dict[str, list[str]] | None = None,
        runs: str = RUNS) -> dict:
    """Train NAME to ``images`` images seen and evaluate it; returns the result record.

    ``other_sets``: further val sets (name -> videos), each scored apart under ``val_sets`` (per clip and clip
    mean), e.g. the new-camera clips of ``../shared/dashcam-extra``, so a gain on the training cameras is checked on
    cameras no training clip has.

    ``branch_from``: a training checkpoint of another run that a fresh start of NAME resumes from (its step, weights,
    optimizer and data position), e.g. a WSD constant-phase checkpoint whose cool-down NAME is.

    ``runs``: the folder of run directories (checkpoints, ``model.pt``); a run started again resumes from its
    ``last.ckpt`` there, so a folder outside the work tree carries a long run across sessions.
    """
    out_dir, run_dir = os.path.join(REPORTS, name), os.path.join(runs, name)
    result_path = os.path.join(out_dir, "result.json")
    if os.path.exists(result_path) and not force:
        print(f"{name}: {result_path} exists, skipping (--force re-runs)")
        with open(result_path) as f:
            return json.load(f)
    steps, batch_size, devices = budget(configs, overrides, images)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(run_dir, exist_ok=True)

    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "fit"]
    for c in configs:
        cmd += ["--config", c]
    cmd += [f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={run_dir}", f"--data.shards={shards}"]
    cmd += [f"--{o}" for o in overrides]
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if os.path.exists(last):
        cmd += [f"--ckpt_path={last}"]
        print(f"{name}: resuming from {last}")
    elif branch_from:
        if not os.path.isfile(branch_from):
            raise SystemExit(f"--branch-from {branch_from}: no such checkpoint")
        cmd += [f"--ckpt_path={branch_from}"]
        print(f"{name}: branching from {branch_from}")
    model_path = os.path.join(run_dir, "model.pt")
    if not os.path.exists(last):  # a fresh start: drop what an earlier configuration of this name left
        for stale in (model_path, os.path.join(run_dir, "curve.json")):
            if os.path.exists(stale):
                os.remove(stale)
    print(f"{name}: {steps} steps x {batch_size} x {devices} = {steps * batch_size * devices} images", flush=True)
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                       env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")})
    for fname in ("config.yaml", "curve.json"):
        if os.path.exists(os.path.join(run_dir, fname)):
            shutil.copy(os.path.join(run_dir, fname), os.path.join(out_dir, fname))

    from compressor.codec.autoencoder import load
    from compressor.tools.evaluate import evaluate

    model = load(model_path)
    t0 = time.perf_counter()
    ev = evaluate(model, videos)
    curve = _read_json(os.path.join(out_dir, "curve.json")) or []
    train_seconds = curve[-1].get("train_seconds") if curve else None
    seen = steps * batch_size * devices
    per_image = flops_per_image(configs, overrides)
    result = {
        "name": name,
        "configs": configs,
        "overrides": overrides,
        "branch_from": branch_from,
        "train_data": train_data(shards),
        "images": seen,
        "steps": steps,
        "batch_size": batch_size * devices,
        "train_seconds": train_seconds,
        "train_images_per_s": seen / train_seconds if train_seconds else None,
        "train_flops_per_image": per_image,
        "train_flops": seen * per_image,
        "params": num_params(model),
        "clips": {c["clip"]: c["psnr"] for c in ev["clips"]},
        "psnr_clip_mean": ev["overall"]["psnr_clip_mean"],
        "psnr_frame_weighted": ev["overall"]["psnr"],
        "ms_ssim": ev["overall"]["ms_ssim"],
        "codebook_usage": ev["overall"]["codebook_usage"],
        "token_entropy_bits": ev["overall"]["token_entropy_bits"],
        "decode_fps": ev["overall"]["decode_fps"],
        "val_sets": {set_name: _score(evaluate(model, set_videos))
                     for set_name, set_videos in (other_sets or {}).items()},
        "eval_seconds": time.perf_counter() - t0,
        "commit": _git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    write_json(result_path, result)  # its presence marks the run as done
    others = "".join(f", {k} {v['psnr_clip_mean']:.2f} dB" for k, v in result["val_sets"].items())
    print(f"{name}: clip-mean PSNR {result['psnr_clip_mean']:.2f} dB{others}, codebook use "
          f"{result['codebook_usage']:.1%}")
    return result


def _score(ev: dict) -> dict:
    return {"clips": {c["clip"]: c["psnr"] for c in ev["clips"]}, "psnr_clip_mean": ev["overall"]["psnr_clip_mean"],
            "codebook_usage": ev["overall"]["codebook_usage"]}


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_results(root: str = REPORTS) -> list[dict]:
    return [r for r in (_read_json(p) for p in sorted(glob.glob(os.path.join(root, "*", "result.json")))) if r]


def table(root: str = REPORTS, baseline: str | None = None) -> str:
    """A markdown table of every result (per clip and clip mean), with the difference to ``baseline``."""
    results = load_results(root)
    if not results:
        raise SystemExit(f"no result.json under {root}")
    clips = sorted({c for r in results for c in r["clips"]})
    short = [c.split("__")[-1].removesuffix(".mp4") for c in clips]
    base = next((r for r in results if r["name"] == baseline), None)
    lines = ["| run | images | " + " | ".join(short) + " | clip mean | vs base | new cameras | codebook use | img/s "
             "| changes |", "|---|---:|" + "---:|" * len(clips) + "---:|---:|---:|---:|---:|---|"]
    for r in sorted(results, key=lambda r: (r["images"], -r["psnr_clip_mean"])):
        delta = f"{r['psnr_clip_mean'] - base['psnr_clip_mean']:+.2f}" if base and r["images"] == base["images"] else ""
        ips = f"{r['train_images_per_s']:.1f}" if r.get("train_images_per_s") else ""
        cells = " | ".join(f"{r['clips'][c]:.2f}" if c in r["clips"] else "" for c in clips)
        first = 1 if base and r["configs"][:1] == base["configs"][:1] else 0  # the baseline's own config is no change
        overlays = [os.path.relpath(c, "configs") for c in r["configs"][first:]
                    if os.path.basename(os.path.dirname(c)) != "experiments"]  # protocol overlays (proxy, wsd) are no change
        videos = (r.get("train_data") or {}).get("train_videos")
        data = [f"{videos} train clips"] if videos and videos != DEFAULT_TRAIN_VIDEOS else []
        changes = ", ".join(overlays + r["overrides"] + data) or "-"
        extra = " / ".join(f"{v['psnr_clip_mean']:.2f}" for v in (r.get("val_sets") or {}).values())
        lines.append(f"| {r['name']} | {r['images']:,} | {cells} | **{r['psnr_clip_mean']:.2f}** | {delta} | "
                     f"{extra} | {r['codebook_usage']:.1%} | {ips} | {changes} |")
    return "\n".join(lines)


def plot_curves(root: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in load_results(root):
        curve = _read_json(os.path.join(root, r["name"], "curve.json")) or []
        pts = [(p["images"], p["val/psnr"]) for p in curve if p.get("images") and "val/psnr" in p]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=r["name"])
    ax.set_xlabel("images seen")
    ax.set_ylabel("val PSNR (dB, validation batches)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bar(report_path: str, method: str = "webp (downscaled)") -> dict:
    """The classical bar per clip and as the clip mean, from a ``compressor.tools.evaluate`` report.json."""
    report = _read_json(report_path)
    if not report or "comparison" not in report:
        raise SystemExit(f"{report_path} is not a compressor.tools.evaluate report with a comparison")
    clips = {c: v["psnr"] for c, v in report["comparison"]["methods"][method]["clips"].items()}
    return {"method": method, "clips": clips, "clip_mean": sum(clips.values()) / len(clips)}


def train_flops(result: dict) -> float:
    """A run's training FLOPs: recorded by ``run`` since --flops existed, else counted from its configs now."""
    if result.get("train_flops"):
        return float(result["train_flops"])
    return result["images"] * flops_per_image(result["configs"], result["overrides"])


def scaling(series: dict[str, list[str]], root: str, bar_psnr: float, output: str, seed_sd: float = 0.24,
            x_axis: str = "images") -> dict:
    """Fit clip-mean PSNR = a + b * log10(images) per series; predict the images for the bar + 1 dB and + 3 dB, and
    the PSNR at 10x and 100x the series' largest budget with a standard deviation.

    ``x_axis="flops"`` measures budgets in training FLOPs instead (a series per model shape: the compute-optimal
    frontier) and adds a panel with each run's validation curve against FLOPs, so that a shape with one finished
    run still shows its trend.

    A log-linear fit is the simplest trend that matches how these curves bend; with three budgets it is a rough
    guide for planning compute, not a law, and the JSON keeps the points so that a better fit can be made later.
    The stated uncertainty is that of the fit when each point carries ``seed_sd`` dB of seed noise (0.24: the pooled
    spread of two seeds of two 12k-image runs); it does not cover the trend bending, which is the larger risk.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if x_axis not in ("images", "flops"):
        raise ValueError(f"x_axis is 'images' or 'flops', got {x_axis!r}")
    results = {r["name"]: r for r in load_results(root)}
    flops = x_axis == "flops"
    fig, axes = plt.subplots(1, 2 if flops else 1, figsize=(13 if flops else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    out: dict = {"bar_clip_mean": bar_psnr, "x_axis": x_axis, "series": {}}
    for label, names in series.items():
        missing = [n for n in names if n not in results]
        if missing:
            raise SystemExit(f"no result.json for {missing} under {root}")
        budget_of = {n: train_flops(results[n]) if flops else results[n]["images"] for n in names}
        pts = sorted((budget_of[n], results[n]["psnr_clip_mean"]) for n in names)
        x, y = np.log10([p[0] for p in pts]), np.array([p[1] for p in pts])
        entry: dict = {"runs": names, "points": pts}
        if flops:
            entry["flops_per_image"] = {n: budget_of[n] / results[n]["images"] for n in names}
        line = ax.plot(10**x, y, "o", label=label)[0]
        if flops:  # each run's validation curve (its val batches, not every frame): the shape's trend
            for n in names:
                curve = _read_json(os.path.join(root, n, "curve.json")) or []
                per_image = budget_of[n] / results[n]["images"]
                cpts = [(p["images"] * per_image, p["val/psnr"]) for p in curve if p.get("images") and "val/psnr" in p]
                if cpts:
                    axes[0, 1].plot(*zip(*cpts), ".-", color=line.get_color(), label=n)
        if len(pts) >= 2:
            b, a = np.polyfit(x, y, 1)
            entry.update(fit={"a": a, "b_per_decade": b})
            entry["predictions"] = _predict(x, a, b, seed_sd, x_axis)
            for gain in (0, 1, 3):
                target = bar_psnr + gain
                entry[f"{x_axis}_for_bar_plus_{gain}dB"] = float(10 ** ((target - a) / b)) if b > 0 else None
            # The trend is drawn up to the +3 dB prediction, but no further than 100x the largest budget: beyond
            # that a fit through a few points is no guide (the JSON keeps the prediction).
            reach = np.log10(entry[f"{x_axis}_for_bar_plus_3dB"] or 1)
            xs = np.linspace(x.min(), min(max(x.max(), reach) + 0.1, x.max() + 2), 50)
            ax.plot(10**xs, a + b * xs, "--", color=line.get_color(), alpha=0.6,
                    label=f"{label}: {b:+.2f} dB per 10x {x_axis}")
        out["series"][label] = entry
    for gain, style in ((0, "-"), (1, ":"), (3, "-.")):
        ax.axhline(bar_psnr + gain, color="grey", ls=style, lw=1, label=f"WebP thumbnail bar + {gain} dB" if gain
                   else "WebP thumbnail bar (224 B)")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs" if flops else "training images seen")
    ax.set_ylabel("val PSNR, mean over clips (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    if flops:
        axes[0, 1].set_xscale("log")
        axes[0, 1].set_xlabel("training FLOPs")
        axes[0, 1].set_ylabel("val PSNR during training (dB, validation batches)")
        axes[0, 1].grid(alpha=0.3, which="both")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    write_json(os.path.splitext(output)[0] + ".json", out)
    return out


def _predict(x, a: float, b: float, seed_sd: float, x_axis: str = "images") -> dict:
    """PSNR at 10x and 100x the largest budget of log10-budgets ``x``, with its standard deviation under seed noise
    (ordinary least squares: var(a + b x0) = sd^2 (1/n + (x0 - mean x)^2 / sum (x - mean x)^2))."""
    import numpy as np

    sxx = float(((x - x.mean()) ** 2).sum())
    out = {"seed_sd_per_point": seed_sd}
    for factor in (10, 100):
        x0 = float(x.max() + np.log10(factor))
        sd = seed_sd * float(np.sqrt(1 / len(x) + (x0 - x.mean()) ** 2 / sxx)) if sxx > 0 else None
        out[f"{factor}x_largest_budget"] = {x_axis: float(10**x0), "psnr": float(a + b * x0), "sd": sd}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train to a budget in images, then evaluate on the val clips")
    r.add_argument("name")
    r.add_argument("--config", nargs="+", required=True, help="LightningCLI YAML files, base first, overlays after")
    length = r.add_mutually_exclusive_group(required=True)
    length.add_argument("--images", type=int, help="training budget in images seen")
    length.add_argument("--flops", type=float,
                        help="training budget in FLOPs (e.g. 2.3e14): the images are FLOPs / the model's training "
                             "FLOPs per image, so that shapes compare at equal compute")
    r.add_argument("--shards", required=True, help="frame shards trained on (python -m compressor.tools.make_shards)")
    r.add_argument("--input", nargs="+", default=["../shared/dashcam"],
                   help="the videos evaluated on: directories with MANIFEST.tsv (--split picks the clips)")
    r.add_argument("--split", default="val")
    r.add_argument("--other-input", nargs="*", default=["../shared/dashcam-extra"],
                   help="further val sets, each scored apart (result.json's val_sets); absent folders are skipped")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="LightningCLI overrides, e.g. model.lr=2e-3")
    r.add_argument("--force", action="store_true", help="re-run even if result.json exists")
    r.add_argument("--runs", default=RUNS, help="where the run's checkpoints and model.pt live; a folder outside the "
                   "work tree keeps a run that spans sessions (it resumes from its last.ckpt when run again)")
    r.add_argument("--branch-from", default=None, metavar="CKPT",
                   help="start from another run's training checkpoint (a WSD cool-down from its constant phase)")
    t = sub.add_parser("table", help="tabulate and plot every result")
    t.add_argument("--reports", default=REPORTS, help="folder of run results (NAME/result.json)")
    t.add_argument("--baseline", default="baseline", help="run the 'vs base' column compares with")
    s = sub.add_parser("scaling", help="clip-mean PSNR against images seen (or training FLOPs), with a log-linear "
                                       "fit per series")
    s.add_argument("--series", nargs="+", required=True, metavar="LABEL=RUN,RUN,...")
    s.add_argument("--bar", required=True, help="compressor.tools.evaluate report.json whose WebP thumbnail is the bar")
    s.add_argument("--reports", default=REPORTS, help="folder of run results (NAME/result.json)")
    s.add_argument("--output", default="reports/scaling.png")
    s.add_argument("--x", dest="x_axis", choices=["images", "flops"], default="images",
                   help="budget axis: images seen, or training FLOPs (one series per model shape: the frontier)")
    s.add_argument("--seed-sd", type=float, default=0.24,
                   help="seed noise of one run's clip mean in dB, for the predictions' uncertainty")
    args = ap.parse_args(argv)
    if args.command == "scaling":
        series = {label: names.split(",") for label, names in (item.split("=", 1) for item in args.series)}
        out = scaling(series, args.reports, bar(args.bar)["clip_mean"], args.output, args.seed_sd, args.x_axis)
        print(json.dumps(out, indent=1))
    elif args.command == "run":
        from compressor.tools.evaluate import select_videos

        images = args.images or images_for_flops(args.config, args.set, args.flops)
        others = {os.path.basename(os.path.normpath(d)): select_videos([d], args.split)
                  for d in args.other_input if os.path.isdir(d)}
        run(args.name, args.config, images, args.shards, select_videos(args.input, args.split), args.set,
            args.force, args.branch_from, others, args.runs)
    else:
        md = table(args.reports, args.baseline)
        with atomic_write(os.path.join(args.reports, "table.md")) as tmp, open(tmp, "w") as f:
            f.write(md + "\n")
        plot_curves(args.reports, os.path.join(args.reports, "curves.png"))
        print(md)
        print(f"wrote {args.reports}/table.md and curves.png")


if __name__ == "__main__":
    main()
