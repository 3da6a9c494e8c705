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
from compressor.training.video import RememberModule, VideoModule
from tests.conftest import tiny_model
from tests.test_distributed import write_frame_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def moved(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def one_step(tmp_path, config: str, quantizer: str, *args: str):
    """``video_cli`` on ``configs/CONFIG`` over generated shards and a tiny intra model, set to one step in float32."""
    write_frame_shards(tmp_path / "shards", [8, 8])
    write_frame_shards(tmp_path / "shards", [6], split="val", start=100)
    tiny_model(quantizer=quantizer).save(tmp_path / "intra.pt")
    return video_cli(["--config", os.path.join(REPO, "configs", config),
                      "--data.shards", str(tmp_path / "shards"), "--model.init_args.intra", str(tmp_path / "intra.pt"),
                      "--data.batch_size", "2", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                      "--trainer.precision", "32-true", "--trainer.accelerator", "cpu", "--trainer.callbacks", "[]",
                      "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                      "--trainer.default_root_dir", str(tmp_path / "run"), *args], run=False)


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


@pytest.mark.slow  # about 45 s on 2 busy cores; test_train_py_trains_a_video_model covers train.py's side
def test_one_step_of_the_video_config_trains_through_the_core_and_exports(tmp_path):
    # the intra model's widths and quantizer, so that init_from_intra (the config's) copies it
    cli = one_step(tmp_path, "video-224B.yaml", "fsq-std", "--model.init_args.enc_dim", "32",
                   "--model.init_args.enc_depth", "1", "--model.init_args.enc_heads", "2", "--model.init_args.dec_dim",
                   "48", "--model.init_args.dec_depth", "1", "--model.init_args.dec_heads", "2")
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
