import json
import math
import os

import pytest
import torch

from compressor.tools import experiments
from tests.test_train import TINY, run_cli


def test_budget_follows_the_base_batch_the_overlays_and_the_overrides(tmp_path, monkeypatch):
    """The images budget comes from the batch size and device count that train.py resolves: configs/base.yaml,
    then the overlays, then the overrides. Change the base and every budget follows."""
    from compressor.training import cli

    proxy = os.path.join(cli.CONFIGS, "experiments", "proxy.yaml")
    steps, batch, devices = experiments.budget([proxy], [], 1600)
    assert (batch, devices) == (16, 1) and steps == 100  # the base's batch of 16
    base = tmp_path / "base.yaml"
    base.write_text(open(cli.BASE_CONFIG).read().replace("batch_size: 16", "batch_size: 8"))
    monkeypatch.setattr(cli, "BASE_CONFIG", str(base))
    assert experiments.budget([proxy], [], 1600) == (200, 8, 1)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data: {batch_size: 32}\n")
    assert experiments.budget([proxy, str(overlay)], [], 1600) == (50, 32, 1)
    assert experiments.budget([proxy, str(overlay)], ["data.batch_size=20"], 1600) == (80, 20, 1)
    assert experiments.budget([proxy], ["trainer.devices=2", "trainer.accelerator=cpu"], 1600) == (100, 8, 2)


def test_a_flops_budget_gives_a_costlier_shape_fewer_images():
    """--flops compares shapes at equal training compute: images = FLOPs / the resolved model's FLOPs per image."""
    from compressor.training import cli

    proxy = os.path.join(cli.CONFIGS, "experiments", "proxy.yaml")
    wide = ["model.decoder.init_args.dim=512", "model.decoder.init_args.heads=8"]
    per_image, per_image_wide = experiments.flops_per_image([proxy], []), experiments.flops_per_image([proxy], wide)
    assert 5e9 < per_image < 2e10 and per_image_wide > 1.3 * per_image  # the recipe: about 11.6 GFLOPs an image
    assert experiments.images_for_flops([proxy], [], 1000 * per_image) == 1000
    assert experiments.images_for_flops([proxy], wide, 1000 * per_image) == math.ceil(1000 * per_image / per_image_wide)


def _result(root, name, images, clips, overrides=(), overlays=(), flops=None):
    os.makedirs(root / name)
    configs = ["configs/a.yaml", *overlays, "configs/experiments/proxy.yaml"]
    record = {"name": name, "configs": configs, "overrides": list(overrides), "images": images,
              "train_images_per_s": 20.0, "clips": clips, "psnr_clip_mean": sum(clips.values()) / len(clips),
              "codebook_usage": 0.5, "train_flops": flops}
    (root / name / "result.json").write_text(json.dumps(record))
    (root / name / "curve.json").write_text(json.dumps([{"step": 1, "images": images, "val/psnr": 20.0}]))


def test_table_compares_each_run_with_the_baseline_at_its_budget(tmp_path):
    _result(tmp_path, "baseline", 100, {"x__a.mp4": 20.0, "x__b.mp4": 22.0})
    _result(tmp_path, "better", 100, {"x__a.mp4": 21.0, "x__b.mp4": 22.5}, ["model.lr=2e-3"])
    _result(tmp_path, "longer", 400, {"x__a.mp4": 23.0, "x__b.mp4": 23.0})
    _result(tmp_path, "conv", 100, {"x__a.mp4": 19.0, "x__b.mp4": 21.0}, ["data.augment=true"], ["configs/conv.yaml"])
    _result(tmp_path, "recipe", 100, {"x__a.mp4": 19.0, "x__b.mp4": 21.0})
    record = json.loads((tmp_path / "recipe" / "result.json").read_text())
    (tmp_path / "recipe" / "result.json").write_text(json.dumps({**record, "configs": ["configs/r.yaml"]}))
    _result(tmp_path, "more-clips", 100, {"x__a.mp4": 20.0, "x__b.mp4": 22.0})
    record = json.loads((tmp_path / "more-clips" / "result.json").read_text())
    (tmp_path / "more-clips" / "result.json").write_text(json.dumps({**record, "train_data": {"train_videos": 36}}))
    md = experiments.table(str(tmp_path), "baseline")
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()[2:]}
    assert "| a | b |" in md.splitlines()[0]
    assert "**21.75** | +0.75 |" in rows["better"] and "model.lr=2e-3" in rows["better"]
    assert "**23.00** |  |" in rows["longer"]  # another budget: no difference is claimed
    assert rows["baseline"].endswith("| - |") and rows["conv"].endswith("| conv.yaml, data.augment=true |")
    assert rows["recipe"].endswith("| r.yaml |")  # another base config is a change
    assert rows["more-clips"].endswith("| 36 train clips |")  # other training clips are a change too
    experiments.plot_curves(str(tmp_path), str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_train_data_counts_videos_not_shards(tmp_path):
    for name in ("train-a__x-000.tar", "train-a__x-001.tar", "train-b-000.tar", "val-c-000.tar", "train-b.done"):
        (tmp_path / name).write_bytes(b"")
    assert experiments.train_data(str(tmp_path)) == {"shards": str(tmp_path), "train_videos": 2}


def test_val_curve_records_images_seen_and_continues_on_resume(tmp_path):
    ckpt = tmp_path / "ckpt"
    common = [*TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.val_check_interval", "2",
              "--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "true",
              "--trainer.callbacks+=compressor.training.callbacks.ValCurve", "--trainer.callbacks.train_frames=3",
              "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
              f"--trainer.callbacks.dirpath={ckpt}", "--trainer.callbacks.save_last=true"]
    run_cli(["fit", *common, "--trainer.max_steps", "4"])
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [(p["step"], p["images"]) for p in curve] == [(2, 4), (4, 8)]  # batch 2
    assert all(p["val/psnr"] > 0 and p["train/psnr"] > 0 and p["train_seconds"] > 0 for p in curve)
    run_cli(["fit", *common, "--trainer.max_steps", "6", "--ckpt_path", str(ckpt / "last.ckpt")])
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4, 6]
    assert curve[2]["train_seconds"] > curve[1]["train_seconds"]  # training time carries across the resume


def test_run_refuses_nothing_silently_without_results(tmp_path):
    with pytest.raises(SystemExit, match="no result.json"):
        experiments.table(str(tmp_path))


def test_scaling_fits_a_log_linear_trend_and_predicts_the_images_for_the_bar(tmp_path):
    # 20 dB at 1k images, 21 dB at 10k, 22 dB at 100k: +1 dB per 10x, so the bar (21) + 3 dB needs 10^5 x 10^2.
    for name, images, psnr in (("a1", 1000, 20.0), ("a2", 10000, 21.0), ("a3", 100000, 22.0)):
        _result(tmp_path, name, images, {"x__c.mp4": psnr})
    out = experiments.scaling({"best": ["a1", "a2", "a3"]}, str(tmp_path), 21.0, str(tmp_path / "scaling.png"),
                              seed_sd=0.3)
    best = out["series"]["best"]
    # 10x and 100x the largest budget, with the OLS standard error of a line through log10 images 3, 4, 5.
    at10, at100 = best["predictions"]["10x_largest_budget"], best["predictions"]["100x_largest_budget"]
    assert (at10["images"], at10["psnr"]) == (pytest.approx(1e6), pytest.approx(23.0))
    assert (at100["images"], at100["psnr"]) == (pytest.approx(1e7), pytest.approx(24.0))
    assert at10["sd"] == pytest.approx(0.3 * (1 / 3 + 4 / 2) ** 0.5)
    assert at100["sd"] == pytest.approx(0.3 * (1 / 3 + 9 / 2) ** 0.5)
    assert best["fit"]["b_per_decade"] == pytest.approx(1.0)
    assert best["images_for_bar_plus_0dB"] == pytest.approx(1e4, rel=1e-6)
    assert best["images_for_bar_plus_1dB"] == pytest.approx(1e5, rel=1e-6)
    assert best["images_for_bar_plus_3dB"] == pytest.approx(1e7, rel=1e-6)
    assert (tmp_path / "scaling.png").stat().st_size > 0 and (tmp_path / "scaling.json").exists()


def test_train_probe_is_the_same_evenly_spread_frames_every_time(tmp_path):
    from compressor.data.datamodule import FramesDataModule
    from tests.test_distributed import write_frame_shards

    write_frame_shards(tmp_path, [10, 5])  # frame k carries k in its first pixel
    data = FramesDataModule(shards=str(tmp_path), batch_size=2, num_workers=0)
    probe = data.train_probe(5)
    assert probe.shape == (5, 3, 128, 256) and probe.dtype == torch.uint8
    assert torch.equal(probe, data.train_probe(5))
    assert [int(f[0, 0, 0]) for f in probe] == [0, 3, 6, 9, 12]


def test_scaling_against_flops_puts_each_shape_at_its_compute(tmp_path):
    """The frontier: budgets in training FLOPs (a larger shape's images cost more), one series per shape."""
    _result(tmp_path, "s1", 1000, {"x__c.mp4": 20.0}, flops=1e13)
    _result(tmp_path, "s2", 10000, {"x__c.mp4": 20.5}, flops=1e14)
    _result(tmp_path, "l1", 1000, {"x__c.mp4": 20.8}, flops=3e13)
    out = experiments.scaling({"small": ["s1", "s2"], "large": ["l1"]}, str(tmp_path), 21.0,
                              str(tmp_path / "frontier.png"), x_axis="flops")
    small, large = out["series"]["small"], out["series"]["large"]
    assert small["points"] == [(1e13, 20.0), (1e14, 20.5)] and large["points"] == [(3e13, 20.8)]
    assert small["fit"]["b_per_decade"] == pytest.approx(0.5) and "fit" not in large
    assert small["predictions"]["10x_largest_budget"]["flops"] == pytest.approx(1e15)
    assert small["flops_for_bar_plus_0dB"] == pytest.approx(1e15, rel=1e-6)
    assert large["flops_per_image"] == {"l1": pytest.approx(3e10)}
    assert (tmp_path / "frontier.png").stat().st_size > 0 and (tmp_path / "frontier.json").exists()
    with pytest.raises(ValueError, match="x_axis"):
        experiments.scaling({"small": ["s1"]}, str(tmp_path), 21.0, str(tmp_path / "f.png"), x_axis="hours")


def test_a_run_resumes_from_its_last_checkpoint_in_a_runs_folder_outside_the_tree(tmp_path, monkeypatch):
    """--runs DIR: a long run's checkpoints live outside the work tree, and running it again resumes there."""
    from compressor.training import cli

    last = tmp_path / "elsewhere" / "long" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    (tmp_path / "val.mp4").write_bytes(b"")  # evaluation never starts: any file of a video's name
    seen = {}

    def train(cmd, **kwargs):
        seen["cmd"] = cmd
        raise InterruptedError  # stop before evaluation: the command is the contract

    monkeypatch.setattr(experiments, "REPORTS", str(tmp_path / "reports"))
    monkeypatch.setattr(experiments.subprocess, "run", train)
    with pytest.raises(InterruptedError):
        experiments.main(["run", "long", "--config", os.path.join(cli.CONFIGS, "experiments", "proxy.yaml"),
                          "--images", "32", "--shards", str(tmp_path), "--input", str(tmp_path), "--split", "",
                          "--other-input", "--runs", str(tmp_path / "elsewhere")])
    assert f"--ckpt_path={last}" in seen["cmd"]
    assert f"--trainer.default_root_dir={last.parent.parent}" in seen["cmd"]
