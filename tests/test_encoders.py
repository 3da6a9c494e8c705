"""The encoders of the ViT-versus-convolution comparison (issue 35): shapes on two grids, gradients, checkpoint round
trips, normalised stems, and overlays (configs/experiments/encoders) at the ViT's training FLOPs."""

import glob
import os
import re

import pytest
import torch
import yaml

from compressor.codec.autoencoder import Autoencoder
from compressor.codec.convblocks import ConvStem
from compressor.codec.decoders import ViTOverlapDecoder
from compressor.codec.encoders import ConvNeXtEncoder, ConvStemViTEncoder, ConvViTEncoder, ViTEncoder
from compressor.codec.quantizers import StandardizedFSQ
from compressor.training.perf import train_flops_per_image
from tests.conftest import assert_round_trip
from tests.test_configs import REPO, parse

OVERLAYS = sorted(glob.glob(os.path.join(REPO, "configs", "experiments", "encoders", "*.yaml")))

# Tiny variants: the contracts do not depend on width, and CI has 2 cores.
TINY = {
    "convstem-group": lambda: ConvStemViTEncoder([8, 8, 16, 16], dim=32, depth=1, heads=2, norm="group"),
    "convstem-layer": lambda: ConvStemViTEncoder([8, 8, 16, 16], dim=32, depth=1, heads=2, norm="layer"),
    "convstem-batch": lambda: ConvStemViTEncoder([8, 8, 16, 16], dim=32, depth=1, heads=2, norm="batch"),
    "convnext": lambda: ConvNeXtEncoder([8, 8, 16, 16], dim=32, depth=2),
    "convvit": lambda: ConvViTEncoder(patch_size=16, dim=32, depth=1, heads=2),
}


def overlay_encoder(path: str) -> torch.nn.Module:
    """The encoder an overlay names, built from its YAML alone (no CLI): the full-size design."""
    with open(path) as f:
        spec = yaml.safe_load(f)["model"]["encoder"]
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)(**spec["init_args"])


def tiny_model(design: str) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(TINY[design](), StandardizedFSQ([8, 8, 8, 6, 5]),
                       ViTOverlapDecoder(patch_size=16, dim=48, depth=1, heads=2))


@pytest.mark.parametrize("size", [(128, 256), (256, 512)])
@pytest.mark.parametrize("path", OVERLAYS, ids=os.path.basename)
def test_encoders_give_one_token_per_16_pixel_cell_on_any_grid(path, size):
    encoder = overlay_encoder(path).eval()
    frames = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        latents = encoder(frames)
    assert encoder.patch_size == 16
    assert latents.shape == (2, size[0] // 16 * size[1] // 16, encoder.dim)  # (B, N, D): 128 or 512 tokens
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("design", sorted(TINY))
def test_backward_reaches_every_encoder_weight_without_nan(design):
    model = tiny_model(design).train()
    x = torch.rand(2, 3, 128, 256) * 2 - 1
    out = model(x)
    ((out["recon"] - x).pow(2).mean() + out["quant_loss"]).backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("design", sorted(TINY))
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, design):
    model = tiny_model(design)
    assert_round_trip(model, tmp_path, "encoder")


@pytest.mark.parametrize("norm", ["group", "layer", "batch"])
def test_every_stem_stage_is_normalised_and_keeps_brightness(norm):
    # The old ConvStemEncoder had nothing holding its activations' scale: 100x the input gave 100x the features.
    torch.manual_seed(0)
    stem = ConvStem([8, 16, 16, 32], dim=32, norm=norm).train()
    x = torch.rand(2, 3, 64, 128) * 2 - 1
    assert stem(x).shape == (2, 32, 4, 8)
    inner = stem.stages(x).std()  # after the last stage's norm and ReLU: about unit scale, whatever the input's
    assert 0.2 < inner < 2 and 0.2 < stem.stages(100 * x).std() < 2
    # A normalised stem must keep the frame's brightness: with instance norm (one channel a group) a frame brightened
    # by a quarter of the range moved the features 0.16x as far as another frame did; with these norms about 1x.
    stem.eval()
    torch.manual_seed(1)
    x, other = torch.rand(1, 3, 64, 128) - 1, torch.rand(1, 3, 64, 128) - 1  # dark frames in [-1, 0]
    with torch.no_grad():
        assert (stem(x + 0.5) - stem(x)).norm() > 0.5 * (stem(other) - stem(x)).norm()


def test_norm_is_checked_when_built_and_when_loaded(tmp_path):
    with pytest.raises(ValueError, match="norm must be one of"):
        ConvStemViTEncoder(norm="instance")
    model = tiny_model("convstem-group")
    export = model.export_dict()
    for bad, match in (("instance", "norm must be one of"), ("x" * 1000, "not a name"), (3, "not a name")):
        export["config"]["encoder"]["init_args"]["norm"] = bad
        with pytest.raises(ValueError, match=match):
            Autoencoder.from_export(export)


def test_grouped_convolution_backward_is_counted_like_its_forward():
    # torch 2.14's FlopCounterMode counts a depthwise conv's weight gradient as a dense conv (x channels); a
    # ConvViT's 1024-channel depthwise convs then read as 1.8x the ViT's FLOPs. The count must be forward x 3.
    from compressor.training.perf import flop_counter

    conv = torch.nn.Conv2d(256, 256, 3, padding=1, groups=256)
    x = torch.rand(1, 256, 8, 16, requires_grad=True)
    with flop_counter() as fc:
        conv(x).sum().backward()
    assert fc.get_total_flops() == 3 * 2 * 256 * 9 * 8 * 16  # forward, input gradient, weight gradient


def test_overlays_are_the_recipe_but_for_the_encoder():
    recipe = parse().model.autoencoder
    for path in OVERLAYS:
        model = parse(os.path.join("experiments", "encoders", os.path.basename(path))).model.autoencoder
        assert model.num_tokens == 128 and model.bytes_per_frame == 224
        for part in ("quantizer", "decoder"):
            assert type(getattr(model, part)) is type(getattr(recipe, part)), (path, part)
            assert getattr(model, part).init_args == getattr(recipe, part).init_args, (path, part)
    vit = parse(os.path.join("experiments", "encoders", "vit.yaml")).model.autoencoder.encoder
    assert type(vit) is ViTEncoder and vit.init_args == recipe.encoder.init_args


@pytest.mark.slow
def test_overlays_cost_the_vits_training_flops_and_what_their_comments_say():
    """Equal compute: each overlay's training FLOPs per image within 10% (in fact 1%) of the ViT's, and the table in
    vit.yaml states what is measured."""
    table = open(os.path.join(REPO, "configs", "experiments", "encoders", "vit.yaml")).read()
    flops = {os.path.basename(p): train_flops_per_image(
        parse(os.path.join("experiments", "encoders", os.path.basename(p))).model.autoencoder) / 1e9 for p in OVERLAYS}
    for name, gflops in flops.items():
        assert gflops == pytest.approx(flops["vit.yaml"], rel=0.10), name
        key = "convstem-*.yaml" if name.startswith("convstem-") else name  # the three norms share a row
        stated = float(re.search(rf"#\s+{re.escape(key)}\s.*?(\d+\.\d+)", table).group(1))
        assert gflops == pytest.approx(stated, abs=0.01), name


def test_bench_resolution_lets_the_token_grid_follow_the_input():
    from compressor.tools.bench_resolution import build

    model = build("experiments/encoders/convstem-group.yaml", (256, 512))
    assert model.image_size == (256, 512) and model.num_tokens == 512 and model.bytes_per_frame == 896
    assert type(model.encoder) is ConvStemViTEncoder


def test_bench_resolution_skips_what_is_too_slow_and_tables_the_ratios():
    from compressor.tools.bench_resolution import measure, to_markdown

    skipped = measure("experiments/encoders/vit.yaml", (128, 256), "cpu", False, 1, 1, 0.01, max_step_s=0.0)
    assert skipped["tokens"] == 128 and "took" in skipped["skipped"] and "encode_fps" not in skipped
    rows = [{"config": "vit", "resolution": "128x256", "tokens": 128, "encode_gflops_per_frame": 1.0,
             "encode_fps": 10.0, "encode_batch": 1, "encoder_train_images_per_s": 5.0, "train_gflops_per_image": 11.6,
             "train_images_per_s": 2.0, "train_batch": 1, "peak_memory_mb": 1.0},
            {**skipped, "config": "vit", "resolution": "256x512"}]
    rows.append({**rows[0], "config": "convnext", "encode_fps": 15.0, "train_images_per_s": 1.0})
    md = to_markdown(rows, "cpu", [(128, 256), (256, 512)])
    assert "| convnext | 1.50 |  |" in md and "| convnext | 0.50 |  |" in md  # encode, then training, ratios
    assert "skipped: one training step" in md


def test_bench_resolution_no_timing_updates_only_the_flops_of_the_rows_it_recounts(tmp_path, monkeypatch):
    import json

    from compressor.tools import bench_resolution

    # In this process rather than one per case (spawning re-imports torch); 128x256 is the smallest the loss takes.
    monkeypatch.setattr(bench_resolution, "run_isolated", lambda fn, cases, threads: [fn(**c) for c in cases])
    timed = {"config": "vit", "file": "experiments/encoders/vit.yaml", "resolution": "128x256", "tokens": 128,
             "encode_gflops_per_frame": 1.0, "encode_fps": 10.0, "encode_batch": 1, "encoder_train_images_per_s": 5.0,
             "train_gflops_per_image": 2.0, "train_images_per_s": 2.0, "train_batch": 1, "peak_memory_mb": 1.0}
    other = {**timed, "config": "convnext", "file": "experiments/encoders/convnext.yaml"}
    (tmp_path / "bench-resolution.json").write_text(json.dumps({"device": "the timed one", "sizes": ["128x256"],
                                                                "rows": [timed, other]}))
    bench_resolution.main(["--device", "cpu", "--no-timing", "--config", "experiments/encoders/vit.yaml",
                           "--sizes", "128x256", "--output", str(tmp_path)])
    result = json.loads((tmp_path / "bench-resolution.json").read_text())
    vit, convnext = result["rows"]
    assert result["device"] == "the timed one" and convnext == other  # a row not recounted is left alone
    assert vit["flops_include_attention"] and vit["train_gflops_per_image"] != 2.0
    assert vit["encode_gflops_per_frame"] != 1.0
    assert {k: v for k, v in vit.items() if k not in bench_resolution.FLOPS_FIELDS} == \
        {k: v for k, v in timed.items() if k not in bench_resolution.FLOPS_FIELDS}  # timings kept
    md = (tmp_path / "bench-resolution.md").read_text()
    assert "FLOPs include attention only in rows recounted" in md  # convnext's FLOPs are the old count
    assert f"| vit | 128x256 | 128 | {vit['encode_gflops_per_frame']:.2f} | 10.0 (1) |" in md
