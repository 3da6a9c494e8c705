"""The video modules (compressor.training.video) as their configs build them, one optimizer step each: RememberModule
fine-tunes the copied decoder and the projections and leaves the per-frame model and the meaning of its tokens alone;
VideoModule trains through the shared core (fused AdamW, the EMA after each step) and exports video.pt and hub/."""

from __future__ import annotations

import os

import pytest
import torch

import compressor
from compressor.data.synthetic import driving_clip
from compressor.training.cli import video_cli
from compressor.codec.decoders import ConditionalViTDecoder, ConditionalViTOverlapDecoder
from compressor.codec.encoders import ConvStemViTEncoder, ViTEncoder
from compressor.training.core import export
from compressor.codec.remember import RememberingCodec
from compressor.training.video import RememberModule, VideoModule
from tests.conftest import tiny_model, video_codec
from tests.test_video_tokens import SMALL_PARTS
from tests.test_distributed import write_frame_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def moved(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def one_step(tmp_path, config: str, quantizer: str, *args: str, design: str = "vit"):
    """``video_cli`` on ``configs/CONFIG`` (over ``configs/video-base.yaml``) over generated shards and a tiny intra
    model, set to one step in float32, exporting through ``ExportCallback`` only."""
    write_frame_shards(tmp_path / "shards", [8, 8])
    write_frame_shards(tmp_path / "shards", [6], split="val", start=100)
    tiny_model(design, quantizer=quantizer).save(tmp_path / "intra.pt")
    configs = [a for c in config.split("+") for a in ("--config", c if os.path.isabs(c) else
                                                       os.path.join(REPO, "configs", c))]
    return video_cli([*configs, "--data.shards", str(tmp_path / "shards"),
                      "--model.init_args.intra", str(tmp_path / "intra.pt"), "--data.batch_size", "2",
                      "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.precision", "32-true",
                      "--trainer.accelerator", "cpu", "--trainer.callbacks", EXPORT_ONLY,
                      "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                      "--trainer.default_root_dir", str(tmp_path / "run"), *args], run=False)


EXPORT_ONLY = '[{"class_path": "compressor.training.callbacks.ExportCallback"}]'


@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
def test_one_step_of_the_remember_config_fine_tunes_the_decoder_and_freezes_the_tokens(tmp_path, quantizer):
    cli = one_step(tmp_path, "video-remember.yaml", quantizer)
    module = cli.model
    assert isinstance(module, RememberModule) and module.hparams.history == 2 and cli.datamodule.hparams.clip_len == 3
    codec = module.codec
    trainable = {name.split(".")[0] for name, p in codec.named_parameters() if p.requires_grad}
    assert trainable == {"post_quant", "decoder", "past", "missing"}
    assert all(m.training for m in codec.decoder.modules())  # fine-tuned as trained, not in the intra's eval mode
    intra, parts, ema = snapshot(module.intra), snapshot(codec), snapshot(module.ema)

    cli.trainer.fit(module, cli.datamodule)

    assert cli.trainer.global_step == 1
    assert not moved(intra, module.intra)  # the encoder and every stored token stay valid
    changed = moved(parts, codec)
    for part in (codec.post_quant, codec.decoder, codec.past):  # the decoder is fine-tuned, not only the projections
        prefix = next(n for n, m in codec.named_children() if m is part)
        names = {f"{prefix}.{k}" for k, v in part.state_dict().items() if v.is_floating_point()}
        assert names <= changed, f"{prefix}: {sorted(names - changed)} did not move"
    assert not any(k.startswith("quantizer.") for k in changed)  # what a token means stays the intra model's
    assert moved(ema, module.ema)  # the EMA follows the step (not one step behind)
    assert (tmp_path / "run" / "remembering.pt").exists()
    # through the one export helper: a Hub folder too, each copy loaded back and checked (the helper raises otherwise)
    assert isinstance(compressor.load(tmp_path / "run" / "hub"), RememberingCodec)


# Two choices of parts for the conditional codec, each as a YAML overlay on configs/video-base.yaml: the recipe's
# (a ViT encoder, the overlapping-tile head, started from the intra model) at tiny sizes, and a conv-stem encoder with
# the linear head and motion, 32 tokens a conditional frame, from scratch.
TINY = """
model:
  class_path: compressor.training.video.VideoModule
  init_args:
    encoder: {class_path: compressor.codec.encoders.ViTEncoder, init_args: {dim: 32, depth: 1, heads: 2, in_channels: 6}}
    decoder:
      class_path: compressor.codec.decoders.ConditionalViTOverlapDecoder
      init_args: {dim: 48, depth: 1, heads: 2}
"""
CONV_STEM = """
model:
  class_path: compressor.training.video.VideoModule
  init_args:
    encoder:
      class_path: compressor.codec.encoders.ConvStemViTEncoder
      init_args: {stem_channels: [8, 8, 16, 16], dim: 32, depth: 1, heads: 2, in_channels: 6}
    quantizer: {class_path: compressor.codec.quantizers.FSQ, init_args: {levels: [8, 5, 5, 5]}}
    decoder:
      class_path: compressor.codec.decoders.ConditionalViTDecoder
      init_args: {dim: 32, depth: 1, heads: 2, motion: true}
    merge: 4
    init_from_intra: false
"""
PARTS = {"vit, overlap head, from the intra model": (TINY, ViTEncoder, ConditionalViTOverlapDecoder, 128),
         "conv stem, linear head with motion, merge 4": (CONV_STEM, ConvStemViTEncoder, ConditionalViTDecoder, 32)}


@pytest.mark.parametrize("choice", list(PARTS))
def test_a_conditional_codec_composed_in_yaml_trains_one_step_and_exports_through_the_one_helper(tmp_path, choice):
    overlay, encoder, decoder, tokens = PARTS[choice]
    (tmp_path / "parts.yaml").write_text(overlay)
    cli = one_step(tmp_path, f"video-224B.yaml+{tmp_path / 'parts.yaml'}", "fsq-std", design="vit-overlap")
    module = cli.model
    codec = module.codec
    assert isinstance(module, VideoModule) and type(codec.encoder) is encoder and type(codec.decoder) is decoder
    assert codec.encoder.in_channels == 6 and codec.num_tokens == tokens
    if module.hparams.init_from_intra:  # the frame's path starts as the intra model's
        assert torch.equal(codec.decoder.head.weight, module.intra.decoder.head.weight)
    live, ema = snapshot(codec), snapshot(module.ema)

    cli.trainer.fit(module, cli.datamodule)

    assert cli.trainer.global_step == 1 and cli.trainer.optimizers[0].defaults["fused"]
    for part in ("encoder", "decoder", "pre_quant", "post_quant"):  # every part trains
        assert any(k.startswith(part) for k in moved(live, codec)), part
    assert {k for k in moved(ema, module.ema) if not k.startswith("quantizer.")}  # the EMA follows the step
    run = tmp_path / "run"
    assert (run / "recon.png").exists() and "## Check at export" in (run / "hub" / "README.md").read_text()
    frames = driving_clip(seed=6, num_frames=5)
    encoded, recon = compressor.load(run / "video.pt").encode_clip(frames)
    again = compressor.load(run / "hub")
    assert type(again.inter.decoder) is decoder and torch.equal(again.decode_clip(encoded), recon)


def test_the_export_helper_writes_and_checks_every_codec(tmp_path):
    """core.export: a per-frame model and a video codec, each to its file and Hub folder, coded through pack and
    unpack, and the written copies must decode as the model in memory; a copy that does not is an error."""
    frames = driving_clip(seed=7, num_frames=5)
    for name, model in (("model.pt", tiny_model()), ("video.pt", video_codec(merge=2, gop=4))):
        done = export(model, str(tmp_path / name), name, {"Training": "none"}, frames)
        assert done["frames"] == 5 and done["psnr"] > 0 and os.path.exists(done["image"])
        if name == "video.pt":  # groups of 4: intra frames (128 x 14 bits) at 0 and 4, P frames of 64 x 10 bits
            assert done["bytes_per_frame"] == (2 * 224 + 3 * 80) / 5
        loaded = compressor.load(done["hub"])
        assert type(loaded) is type(model)
        assert "PSNR" in (tmp_path / name / "hub" / "README.md").read_text()

    other = tiny_model()
    with torch.no_grad():
        other.decoder.head.bias.add_(0.5)  # what a broken save would write: other weights
    broken = tiny_model()
    broken.save = other.save
    with pytest.raises(RuntimeError, match="does not decode the check frames"):
        export(broken, str(tmp_path / "broken"), "model.pt", {}, frames)


@pytest.mark.slow  # about 45 s on 2 busy cores; test_train_py_trains_a_video_model covers train.py's side
def test_one_step_of_the_video_config_trains_through_the_core_and_exports(tmp_path):
    # the intra model's design, widths and quantizer, so that init_from_intra (the config's) copies it
    cli = one_step(tmp_path, "video-224B.yaml", "fsq-std", *SMALL_PARTS, "--model.init_args.decoder.init_args.dim=48",
                   design="vit-overlap")
    module = cli.model
    assert isinstance(module, VideoModule)
    ema = snapshot(module.ema)
    cli.trainer.fit(module, cli.datamodule)
    assert cli.trainer.global_step == 1 and cli.trainer.optimizers[0].defaults["fused"]
    assert {k for k in moved(ema, module.ema) if not k.startswith("quantizer.")}  # the EMA follows the step
    # calibrate_ema refit the EMA's quantizer statistics on its own outputs of the step's conditional frames
    assert int(module.ema.quantizer.norm.num_batches_tracked) == 4
    codec = compressor.load(tmp_path / "run" / "video.pt")
    encoded, recon = codec.encode_clip(driving_clip(seed=6, num_frames=4))
    assert torch.equal(compressor.load(tmp_path / "run" / "hub").decode_clip(encoded), recon)
