"""The decoders of the decoder-side comparison (issue 35 item 3): shapes from the token grid, gradients, checkpoint
round trips with and without their optional norm, and overlays (configs/experiments/decoders) at the reference
decoder's training FLOPs."""

import glob
import os
import re

import pytest
import torch
import yaml

from compressor.codec.autoencoder import Autoencoder
from compressor.codec.decoders import ConvDecoder, ConvUpsampleDecoder, ViTOverlapDecoder
from compressor.codec.encoders import ViTEncoder
from compressor.codec.quantizers import StandardizedFSQ
from compressor.training.perf import train_flops_per_image
from tests.conftest import assert_round_trip
from tests.test_configs import parse

FOLDER = os.path.join("experiments", "decoders")
OVERLAYS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                         FOLDER, "*.yaml")))
REFERENCE = "vit-overlap.yaml"

# Tiny variants: the contracts do not depend on width, and CI has 2 cores.
TINY = {
    "hybrid": lambda norm: ConvUpsampleDecoder(dim=32, depth=1, heads=2, head_channels=[16, 16, 8, 8], norm=norm),
    "conv": lambda norm: ConvDecoder(dim=32, depth=2, head_channels=[16, 16, 8, 8], norm=norm),
}
NORMS = [None, "group"]


def overlay_decoder(path: str) -> torch.nn.Module:
    """The decoder an overlay names, built from its YAML alone (no CLI): the full-size design."""
    with open(path) as f:
        spec = yaml.safe_load(f)["model"]["decoder"]
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)(**spec["init_args"])


def tiny_model(design: str, norm: str | None) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(ViTEncoder(patch_size=16, dim=32, depth=1, heads=2), StandardizedFSQ([8, 8, 8, 6, 5]),
                       TINY[design](norm))


@pytest.mark.parametrize("path", OVERLAYS, ids=os.path.basename)
def test_overlay_decoders_paint_a_frame_from_the_token_grid(path):
    decoder = overlay_decoder(path).eval()
    codes = torch.randn(2, 8 * 16, decoder.dim)  # (B, N, D): the 8x16 grid of a 128x256 frame
    with torch.no_grad():
        frames = decoder(codes, (8, 16))
    assert decoder.patch_size == 16
    assert frames.shape == (2, 3, 128, 256) and torch.isfinite(frames).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("design", sorted(TINY))
def test_backward_reaches_every_decoder_weight_without_nan(design, norm):
    model = tiny_model(design, norm).train()
    x = torch.rand(2, 3, 128, 256) * 2 - 1
    assert model(x)["recon"].shape == (2, 3, 128, 256)
    # The residual branches' last convs start at zero, so at the first step nothing before them gets a gradient; one
    # optimiser step moves them off zero, and from then on every weight must learn.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        out = model(x)
        ((out["recon"] - x).pow(2).mean() + out["quant_loss"]).backward()
        optimizer.step()
    for name, p in model.decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("design", sorted(TINY))
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, design, norm):
    model = tiny_model(design, norm)
    assert_round_trip(model, tmp_path, "decoder")


@pytest.mark.parametrize("design", sorted(TINY))
def test_every_up_stage_and_residual_block_is_normalised_and_holds_the_scale(design):
    decoder = TINY[design]("group")
    blocks = decoder.init_args["depth"] if design == "conv" else 0  # the hybrid's token grid is a transformer's
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == blocks + len(decoder.init_args["head_channels"])
    # Without a norm, 100x the first stage's input gives 100x its activations; with one, about the same scale.
    stages = decoder.net[:blocks + 1] if design == "conv" else decoder.head[:1]
    plain = (ConvDecoder if design == "conv" else ConvUpsampleDecoder)(**{**decoder.init_args, "norm": None})
    bare = plain.net[:blocks + 1] if design == "conv" else plain.head[:1]
    x = torch.randn(2, 32, 8, 16)
    with torch.no_grad():
        assert stages(100 * x).std() < 2 * stages(x).std()
        assert bare(100 * x).std() > 20 * bare(x).std()


def test_without_norm_the_modules_are_those_of_older_checkpoints(tmp_path):
    # Checkpoints written before the norm argument have no "norm" in their config and these weight names; they must
    # still load, into the same modules.
    old_names = {
        "conv": ["net.0.body.0", "net.0.body.2", "net.1.up.0", "net.1.refine.1", "net.2.up.0", "net.2.refine.1",
                 "net.3.up.0", "net.3.refine.1", "net.4.up.0", "net.4.refine.1", "net.5"],
        "hybrid": ["head.0.up.0", "head.0.refine.1", "head.1.up.0", "head.1.refine.1", "head.2.up.0",
                   "head.2.refine.1", "head.3.up.0", "head.3.refine.1", "head.4"],
    }
    for design, names in old_names.items():
        decoder = (ConvDecoder(dim=16, depth=1, head_channels=[8, 8, 8, 8]) if design == "conv"
                   else ConvUpsampleDecoder(dim=16, depth=1, heads=2, head_channels=[8, 8, 8, 8]))
        keys = [k for k in decoder.state_dict() if not k.startswith("transformer.")]
        assert keys == [f"{n}.{w}" for n in names for w in ("weight", "bias")], design
        model = tiny_model(design, None).eval()
        export = model.export_dict()
        del export["config"]["decoder"]["init_args"]["norm"]
        loaded = Autoencoder.from_export(export)
        tokens = torch.randint(0, model.codebook_size, (2, model.num_tokens))
        assert loaded.decoder.init_args["norm"] is None
        assert torch.equal(loaded.decode(tokens), model.decode(tokens))


@pytest.mark.parametrize("design", sorted(TINY))
def test_norm_is_checked_when_built_and_when_loaded(design):
    with pytest.raises(ValueError, match=r"norm must be one of .* or None"):
        TINY[design]("instance")
    export = tiny_model(design, "group").export_dict()
    for bad, match in (("instance", "norm must be one of"), ("x" * 1000, "not a name"), (3, "not a name")):
        export["config"]["decoder"]["init_args"]["norm"] = bad
        with pytest.raises(ValueError, match=match):
            Autoencoder.from_export(export)


def test_overlays_are_the_recipe_but_for_the_decoder():
    recipe = parse().model.autoencoder
    assert {os.path.basename(p) for p in OVERLAYS} == {REFERENCE, "hybrid.yaml", "conv.yaml"}
    for path in OVERLAYS:
        with open(path) as f:
            spec = yaml.safe_load(f)
        assert set(spec) == {"model"} and set(spec["model"]) == {"decoder"}, path  # nothing else changes
        model = parse(os.path.join(FOLDER, os.path.basename(path))).model.autoencoder
        assert model.num_tokens == 128 and model.bytes_per_frame == 224
        for part in ("encoder", "quantizer"):
            assert type(getattr(model, part)) is type(getattr(recipe, part)), (path, part)
            assert getattr(model, part).init_args == getattr(recipe, part).init_args, (path, part)
        # The CLI builds what the file says (no argument of the base's decoder carried over to another class).
        built, named = model.decoder, overlay_decoder(path)
        assert type(built) is type(named) and built.init_args == named.init_args, path
        if os.path.basename(path) != REFERENCE:
            assert built.init_args["norm"] == "group", path
    reference = parse(os.path.join(FOLDER, REFERENCE)).model.autoencoder.decoder
    assert type(reference) is ViTOverlapDecoder and reference.init_args == recipe.decoder.init_args


@pytest.mark.slow
def test_overlays_cost_the_references_training_flops_and_what_their_comments_say():
    """Equal compute: each overlay's training FLOPs per image within 3% of the reference decoder's; the first comment
    of each file and the table in the reference's state what is measured."""
    flops = {os.path.basename(p): train_flops_per_image(
        parse(os.path.join(FOLDER, os.path.basename(p))).model.autoencoder) / 1e9 for p in OVERLAYS}
    table = open(os.path.join(os.path.dirname(OVERLAYS[0]), REFERENCE)).read()
    for path in OVERLAYS:
        name, gflops = os.path.basename(path), flops[os.path.basename(path)]
        assert gflops == pytest.approx(flops[REFERENCE], rel=0.03), name
        text = open(path).read()
        stated = re.search(r"(\d+\.\d+) training GFLOPs per image", text)
        assert gflops == pytest.approx(float(stated.group(1)), abs=0.01), name
        row = re.search(rf"#\s+{re.escape(name)}\s.*?\s(\d+\.\d+)\s", table)
        assert gflops == pytest.approx(float(row.group(1)), abs=0.01), name
        if name != REFERENCE:
            against = re.search(r"against the reference's (\d+\.\d+) \(([+-]\d+\.\d)%", text)
            assert flops[REFERENCE] == pytest.approx(float(against.group(1)), abs=0.01), name
            assert 100 * (gflops / flops[REFERENCE] - 1) == pytest.approx(float(against.group(2)), abs=0.05), name
