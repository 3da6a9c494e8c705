"""The fixed budget at higher resolution (issue 35 item 4): 128 tokens of 32 pixels from a 256x512 frame, the ViT with
32-pixel patches against the conv stem with a fifth stride-2 stage (configs/experiments/highres). Each overlay builds
the 224-byte model at 256x512, the two differ in the encoder alone, and they cost equal training FLOPs."""

import glob
import os
import re

import pytest
import torch

from compressor.codec.decoders import ViTOverlapDecoder
from compressor.codec.encoders import ConvStemViTEncoder, ViTEncoder
from compressor.training.cli import resolve
from compressor.training.perf import train_flops_per_image
from tests.test_configs import REPO, parse

FOLDER = os.path.join("experiments", "highres")
OVERLAYS = sorted(glob.glob(os.path.join(REPO, "configs", FOLDER, "*.yaml")))
CHAIN = [os.path.join("experiments", "proxy.yaml")]  # each overlay is used after base.yaml and proxy.yaml


def model(path: str):
    return parse(*CHAIN, os.path.join(FOLDER, os.path.basename(path))).model.autoencoder


def test_the_two_arms_are_there():
    assert {os.path.basename(p) for p in OVERLAYS} == {"vit-p32.yaml", "convstem5-group.yaml"}


@pytest.mark.parametrize("path", OVERLAYS, ids=os.path.basename)
def test_overlay_codes_a_256x512_frame_in_128_tokens_and_back(path):
    ae = model(path).eval()
    assert ae.image_size == (256, 512) and ae.grid == (8, 16)  # 32-pixel tokens
    assert ae.num_tokens == 128 and ae.bytes_per_frame == 224
    assert ae.encoder.patch_size == ae.decoder.patch_size == 32
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (1, 3, 256, 512), dtype=torch.uint8)
    tokens = ae.encode(frames)
    assert tokens.shape == (1, 128)
    recon = ae.decode(tokens)
    assert recon.shape == (1, 3, 256, 512) and recon.dtype == torch.uint8


def test_overlays_differ_in_the_encoder_alone():
    """Same decoder, quantizer, loss, data and schedule: the resolved configs are equal but for model.encoder."""
    configs = {}
    for path in OVERLAYS:
        cfg = resolve([a for c in CHAIN for a in ("--config", os.path.join(REPO, "configs", c))]
                      + ["--config", path]).as_dict()
        cfg.pop("config")  # the file names themselves
        configs[os.path.basename(path)] = (cfg["model"].pop("encoder"), cfg)
    (vit, vit_rest), (stem, stem_rest) = configs["vit-p32.yaml"], configs["convstem5-group.yaml"]
    assert vit_rest == stem_rest
    assert tuple(vit_rest["data"]["image_size"]) == (256, 512)
    decoder = vit_rest["model"]["decoder"]
    assert decoder["class_path"].endswith(ViTOverlapDecoder.__name__) and decoder["init_args"]["patch_size"] == 32
    # The ViT is the recipe's but for the patch; the stem is the 128x256 comparison's with a fifth stage.
    recipe = resolve([]).as_dict()["model"]["encoder"]
    assert vit["class_path"] == recipe["class_path"] and vit["class_path"].endswith(ViTEncoder.__name__)
    assert vit["init_args"] == {**recipe["init_args"], "patch_size": 32}
    assert stem["class_path"].endswith(ConvStemViTEncoder.__name__)
    assert len(stem["init_args"]["stem_channels"]) == 5 and stem["init_args"]["norm"] == "group"


@pytest.mark.slow
def test_overlays_cost_equal_training_flops_and_what_their_comments_say():
    """Equal compute within 3% (Xiao et al.'s rule: the stem pays with transformer blocks), and each file's header
    states its measured training GFLOPs per image."""
    flops = {os.path.basename(p): train_flops_per_image(model(p)) / 1e9 for p in OVERLAYS}
    assert flops["convstem5-group.yaml"] == pytest.approx(flops["vit-p32.yaml"], rel=0.03)
    for path in OVERLAYS:
        stated = re.search(r"([\d.]+) training GFLOPs per image", open(path).read())
        assert stated and float(stated.group(1)) == pytest.approx(flops[os.path.basename(path)], abs=0.01), path
