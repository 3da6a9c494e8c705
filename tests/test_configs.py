import glob
import os
import re

import pytest
import yaml

from compressor.codec.encoders import ConvEncoder, ConvStemEncoder, ViTEncoder
from compressor.codec.quantizers import VQ, StandardizedFSQ
from compressor.tools.bench_train import model_from_config
from compressor.training.cli import BASE_CONFIG, cli, is_video_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per-frame configs: overlays on configs/base.yaml. Video configs (their own modules and CLI) are overlays on
# configs/video-base.yaml, built and trained in test_video_training.py.
VIDEO_CONFIGS = [c for c in sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))) if is_video_config(["--config", c])]
CONFIGS = [c for c in sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))) if c not in VIDEO_CONFIGS]
GPU_MODELS = ["vit-224B.yaml", "convstem-224B.yaml", "vq-224B.yaml", "comma-scale.yaml", "comma-scale-convstem.yaml"]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def parse(*configs: str, extra: tuple[str, ...] = ()):
    args = [a for c in configs for a in ("--config", os.path.join(REPO, "configs", c))]
    return cli([*args, "--trainer.accelerator", "cpu", "--trainer.logger", "false", *extra], run=False)


def chain(name: str) -> list[str]:
    """The overlays a config is documented to go with: GPU models sit on gpu.yaml."""
    return ["gpu.yaml", name] if name in GPU_MODELS else [name]


@pytest.mark.slow
@pytest.mark.parametrize("config", [os.path.basename(c) for c in CONFIGS if not c.endswith("base.yaml")])
def test_config_builds_a_224_byte_model(config):
    model = parse(*chain(config)).model.autoencoder
    assert model.num_tokens == 128 and model.bytes_per_frame <= 224
    # The file name says the design; the model must be that design.
    design = ConvStemEncoder if "convstem" in config else ConvEncoder if "conv-" in config else ViTEncoder
    assert type(model.encoder) is design, (config, type(model.encoder))
    assert isinstance(model.quantizer, VQ) == config.startswith("vq-")
    assert count(model.decoder) > count(model.encoder)  # the decoder is the larger half
    # The benchmarks build the same model from the same parser, without the training module around it.
    assert count(model_from_config(config)) == count(model)
    if config == "comma-scale.yaml":
        assert 40e6 < count(model.encoder) < 60e6 and 85e6 < count(model.decoder) < 115e6


def test_no_config_trains_the_recommended_recipe():
    bare, named = parse(), parse("cpu-best-224B.yaml")
    assert isinstance(bare.model.autoencoder.quantizer, StandardizedFSQ) and bare.datamodule.hparams.augment
    assert bare.datamodule.hparams.interleave_shards and named.datamodule.hparams.interleave_shards
    assert bare.trainer.max_steps == named.trainer.max_steps == 11250  # 180k images of 16
    assert count(bare.model) == count(named.model)


def test_overlays_hold_only_their_differences_from_the_base():
    # A copied trainer block is how the configs drifted apart before: only the base and gpu.yaml carry one.
    for path in CONFIGS:
        with open(path) as f:
            trainer = yaml.safe_load(f).get("trainer", {})
        if os.path.basename(path) not in ("base.yaml", "gpu.yaml", "demo.yaml"):
            assert "callbacks" not in trainer and "precision" not in trainer, path


def test_video_overlays_hold_only_their_differences_from_the_video_base():
    # Video runs start from configs/video-base.yaml (video_cli), as per-frame runs from base.yaml: no overlay copies
    # its plumbing, and each names the module it trains (which tells train.py that it is a video run).
    for path in VIDEO_CONFIGS:
        with open(path) as f:
            config = yaml.safe_load(f)
        if os.path.basename(path) != "video-base.yaml":
            assert set(config.get("trainer", {})) == {"default_root_dir"}, path
            assert set(config) <= {"trainer", "model", "data"}, path
        assert config["model"]["class_path"].startswith("compressor.training.video."), path


def test_gpu_models_inherit_the_recipe_and_the_gpu_plumbing():
    cfg = parse("gpu.yaml", "vit-224B.yaml")
    assert isinstance(cfg.model.autoencoder.quantizer, StandardizedFSQ) and cfg.datamodule.hparams.augment
    assert cfg.datamodule.hparams.batch_size == 64 and cfg.trainer.max_steps == 200000


def test_image_size_is_given_once_and_the_model_follows_it():
    with pytest.raises(ValueError, match="512 tokens"):  # 256x512 is 512 tokens: over the 224-byte budget
        parse(extra=("--data.image_size", "[256, 512]"))
    cfg = parse(extra=("--data.image_size", "[256, 512]", "--model.max_bytes_per_frame", "896"))
    assert cfg.model.autoencoder.image_size == (256, 512) and cfg.model.autoencoder.num_tokens == 512
    with pytest.raises(SystemExit):  # a linked target cannot be set on its own
        parse(extra=("--model.image_size", "[256, 512]"))


def test_every_config_in_the_readme_table_exists():
    with open(os.path.join(REPO, "README.md")) as f:
        listed = set(re.findall(r"^\| `([\w./-]+\.yaml)` \|", f.read(), flags=re.M))
    names = {os.path.relpath(c, os.path.join(REPO, "configs")) for c in CONFIGS}
    assert {"base.yaml", "demo.yaml", "vit-224B.yaml", "convstem-224B.yaml", "vq-224B.yaml", "comma-scale.yaml"} <= listed
    assert listed <= names, listed - names
    assert {"video-base.yaml", "video-224B.yaml", "video-56B.yaml", "video-remember.yaml"} == {
        os.path.basename(c) for c in VIDEO_CONFIGS}
    assert os.path.exists(BASE_CONFIG)


@pytest.mark.parametrize("budget", [96, 128, 160, 224])
def test_rate_distortion_overlays_set_the_byte_budget(budget):
    cfg = parse("cpu-vit-224B-aug.yaml", f"rd/{budget}B.yaml")
    assert cfg.model.autoencoder.bytes_per_frame == budget and cfg.model.autoencoder.num_tokens == 128
    assert cfg.trainer.max_steps == 1000 and cfg.model.hparams.time_budget_s is None  # equal step budget


SHAPE_GFLOPS = {"tiny.yaml": 3.2, "small.yaml": 5.7, "large.yaml": 19.6, "encoder-heavy.yaml": 11.4}


@pytest.mark.parametrize("shape", sorted(SHAPE_GFLOPS))
def test_shape_overlays_keep_the_tokens_and_cost_what_their_comment_says(shape):
    """The equal-FLOPs shapes (configs/experiments/shapes) change only widths and depths: same 224-byte tokens, and
    the training FLOPs per image their comments (and docs/experiments.md) state."""
    from compressor.training.perf import train_flops_per_image

    model = parse(os.path.join("experiments", "shapes", shape)).model.autoencoder
    assert model.num_tokens == 128 and model.bytes_per_frame == 224
    assert train_flops_per_image(model) / 1e9 == pytest.approx(SHAPE_GFLOPS[shape], rel=0.02)
    assert SHAPE_GFLOPS[shape] == pytest.approx(float(re.search(r"([\d.]+) GFLOPs", open(
        os.path.join(REPO, "configs", "experiments", "shapes", shape)).read()).group(1)))


def test_the_documented_ddp_timeout_overlay_bounds_a_hung_collective(tmp_path):
    """docs/distributed.md's YAML for a shorter process-group timeout (a rank stuck in a collective with no signal
    fails after it) is what the CLI builds: a DDPStrategy whose timeout is that timedelta, not the 30-minute default."""
    import datetime

    with open(os.path.join(REPO, "docs", "distributed.md")) as f:
        snippet = re.search(r"```yaml\n(.*?DDPStrategy.*?)```", f.read(), re.S).group(1)
    overlay = tmp_path / "ddp-timeout.yaml"
    overlay.write_text("\n".join(line[2:] for line in snippet.splitlines()))  # the doc indents it in a list item
    trainer = cli(["--config", str(overlay), "--trainer.accelerator", "cpu", "--trainer.logger", "false"],
                  run=False).trainer
    assert trainer.strategy._timeout == datetime.timedelta(minutes=5)
