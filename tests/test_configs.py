import glob
import os
import re

import pytest
from pytorch_lightning.cli import LightningCLI

from compressor.codec.encoders import ConvEncoder, ConvStemEncoder, ViTEncoder
from compressor.codec.quantizers import VQ
from compressor.data import FramesDataModule
from compressor.training.module import CompressorModule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=os.path.basename)
def test_config_builds_a_224_byte_model(config):
    cli = LightningCLI(CompressorModule, FramesDataModule, run=False,
                       args=["--config", config, "--trainer.accelerator", "cpu", "--trainer.logger", "false"])
    model = cli.model.autoencoder
    assert model.num_tokens == 128 and model.bytes_per_frame <= 224
    # The file name says the design; the model must be that design.
    name = os.path.basename(config)
    design = ConvStemEncoder if "convstem" in name else ConvEncoder if "conv-" in name else ViTEncoder
    assert type(model.encoder) is design, (name, type(model.encoder))
    assert isinstance(model.quantizer, VQ) == name.startswith("vq-")
    assert count(model.decoder) > count(model.encoder)  # the decoder is the larger half
    if os.path.basename(config) == "comma-scale.yaml":
        assert 40e6 < count(model.encoder) < 60e6 and 85e6 < count(model.decoder) < 115e6


def test_every_config_in_the_readme_table_exists():
    with open(os.path.join(REPO, "README.md")) as f:
        listed = set(re.findall(r"^\| `([\w./-]+\.yaml)` \|", f.read(), flags=re.M))
    names = {os.path.relpath(c, os.path.join(REPO, "configs")) for c in CONFIGS}
    assert {"demo.yaml", "vit-224B.yaml", "convstem-224B.yaml", "vq-224B.yaml", "comma-scale.yaml"} <= listed
    assert listed <= names, listed - names


@pytest.mark.parametrize("budget", [96, 128, 160, 224])
def test_rate_distortion_overlays_set_the_byte_budget(budget):
    overlay = os.path.join(REPO, "configs", "rd", f"{budget}B.yaml")
    cli = LightningCLI(CompressorModule, FramesDataModule, run=False,
                       args=["--config", os.path.join(REPO, "configs", "cpu-vit-224B-aug.yaml"), "--config", overlay,
                             "--trainer.accelerator", "cpu", "--trainer.logger", "false"])
    assert cli.model.autoencoder.bytes_per_frame == budget and cli.model.autoencoder.num_tokens == 128
    assert cli.trainer.max_steps == 1000 and cli.model.hparams.time_budget_s is None  # equal step budget
