import glob
import os

import pytest
from pytorch_lightning.cli import LightningCLI

from compressor.data import FramesDataModule
from compressor.module import CompressorModule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("config", CONFIGS, ids=os.path.basename)
def test_config_builds_a_224_byte_model(config):
    cli = LightningCLI(CompressorModule, FramesDataModule, run=False,
                       args=["--config", config, "--trainer.accelerator", "cpu", "--trainer.logger", "false"])
    model = cli.model.autoencoder
    assert model.num_tokens == 128 and model.bytes_per_frame <= 224
    assert count(model.decoder) > count(model.encoder)  # the decoder is the larger half
    if os.path.basename(config) == "comma-scale.yaml":
        assert 40e6 < count(model.encoder) < 60e6 and 85e6 < count(model.decoder) < 115e6


def test_required_configs_exist():
    names = {os.path.basename(c) for c in CONFIGS}
    assert {"demo.yaml", "vit-224B.yaml", "convstem-224B.yaml", "vq-224B.yaml", "comma-scale.yaml"} <= names


@pytest.mark.parametrize("budget", [96, 128, 160, 224])
def test_rate_distortion_overlays_set_the_byte_budget(budget):
    overlay = os.path.join(REPO, "configs", "rd", f"{budget}B.yaml")
    cli = LightningCLI(CompressorModule, FramesDataModule, run=False,
                       args=["--config", os.path.join(REPO, "configs", "cpu-vit-224B-aug.yaml"), "--config", overlay,
                             "--trainer.accelerator", "cpu", "--trainer.logger", "false"])
    assert cli.model.autoencoder.bytes_per_frame == budget and cli.model.autoencoder.num_tokens == 128
    assert cli.trainer.max_steps == 1000 and cli.model.hparams.time_budget_s is None  # equal step budget
