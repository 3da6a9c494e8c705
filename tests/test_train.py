import os

import pytest
import torch
import torchvision

import compressor
from compressor.data.datamodule import FramesDataModule
from compressor.training.losses import CompressionLoss, PatchDiscriminator, PerceptualLoss
from compressor.training.cli import cli
from compressor.training.module import CompressorModule
from compressor.codec.layers import Attention

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config", os.path.join(REPO, "configs", "demo.yaml"),
    "--model.encoder.init_args.dim", "32", "--model.encoder.init_args.depth", "1", "--model.encoder.init_args.heads", "2",
    "--model.decoder.init_args.dim", "48", "--model.decoder.init_args.depth", "1", "--model.decoder.init_args.heads", "2",
    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--data.batch_size", "2", "--data.num_workers", "0", "--data.frames_per_epoch", "16", "--data.val_frames", "4",
]


def run_cli(args):
    return cli(args)


def test_fast_dev_run_exports_a_loadable_model(tmp_path, capsys):
    run_cli(["fit", *TINY, "--trainer.fast_dev_run", "2", "--trainer.default_root_dir", str(tmp_path)])
    model = compressor.load(tmp_path / "model.pt")
    assert model.num_tokens == 128 and model.bytes_per_frame == 224
    assert (tmp_path / "recon.png").exists()
    assert "bytes/frame" in capsys.readouterr().out


@pytest.mark.slow
def test_checkpoint_resume_continues_the_step_count(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    common = [*TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.val_check_interval", "2",
              "--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "true",
              "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
              f"--trainer.callbacks.dirpath={ckpt_dir}", "--trainer.callbacks.save_last=true"]
    cli = run_cli(["fit", *common, "--trainer.max_steps", "3"])
    assert cli.trainer.global_step == 3
    last = ckpt_dir / "last.ckpt"
    cli = run_cli(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", str(last)])
    assert cli.trainer.global_step == 5
    # The Lightning checkpoint also loads through the codec API (weights-only), giving the EMA model.
    model = compressor.load(last)
    frames = torch.randint(0, 256, (1, 3, 128, 256), dtype=torch.uint8)
    assert model.encode(frames).shape == (1, 128)


@pytest.mark.slow
def test_optional_losses_train_without_downloads(tmp_path):
    weights = tmp_path / "vgg16_features.pt"
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), weights)
    cli = run_cli(["fit", *TINY, "--trainer.fast_dev_run", "2", "--trainer.default_root_dir", str(tmp_path),
                   "--model.loss.perceptual_weight", "0.1", "--model.loss.perceptual_weights_path", str(weights),
                   "--model.loss.gan_weight", "0.1", "--model.loss.gan_start_step", "1"])
    module = cli.model
    loss = module.loss
    assert isinstance(loss.perceptual, PerceptualLoss) and isinstance(loss.discriminator, PatchDiscriminator)
    assert cli.trainer.global_step == 2  # one optimizer step per batch even with the discriminator on
    assert all(torch.isfinite(p).all() for p in module.parameters())
    metrics = cli.trainer.callback_metrics
    for name in ("train/perceptual", "train/gan_g", "train/gan_d"):  # the delayed start switched the GAN on
        assert torch.isfinite(metrics[name]), name


def test_perceptual_loss_needs_local_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no download"):
        PerceptualLoss(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="perceptual_weights_path"):
        CompressionLoss(perceptual_weight=1.0)


def test_perceptual_loss_is_zero_for_identical_frames(tmp_path):
    weights = tmp_path / "vgg.pt"
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), weights)
    loss = PerceptualLoss(str(weights))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, -x).item() > 0


@pytest.mark.slow
def test_time_budget_drives_the_cosine_to_its_floor(tmp_path):
    cli = run_cli(["fit", *TINY, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                   "--trainer.default_root_dir", str(tmp_path), "--model.warmup_steps", "1",
                   "--model.time_budget_s", "0.001", "--model.lr", "1e-3", "--model.min_lr_ratio", "0.1"])
    lr = cli.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
    assert lr == pytest.approx(1e-4)


def test_calibrate_ema_fits_normalization_statistics_to_the_ema_weights():
    from compressor.codec.decoders import ViTDecoder
    from compressor.codec.encoders import ViTEncoder
    from compressor.codec.quantizers import StandardizedFSQ

    torch.manual_seed(0)
    module = CompressorModule(ViTEncoder(dim=32, depth=1, heads=2), StandardizedFSQ(), ViTDecoder(dim=48, depth=1, heads=2))
    ema = module.ema.eval()
    with torch.no_grad():  # EMA weights that trail the live ones: their outputs sit elsewhere
        ema.pre_quant.bias += torch.tensor([3.0, -2.0, 0.5, 0.0, 1.0])
    norm = ema.quantizer.norm
    frames = [torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8) for _ in range(3)]
    module._recent_frames.extend(frames)
    module.calibrate_ema()
    with torch.no_grad():
        z = torch.cat([ema.pre_quant(ema.encoder(f.float() / 127.5 - 1)).flatten(0, 1) for f in frames])
    torch.testing.assert_close(norm.running_mean, z.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(norm.running_var, z.var(0), atol=1e-3, rtol=1e-3)
    assert norm.momentum == 0.01 and not norm.training and not ema.training  # settings restored


def test_wsd_holds_the_learning_rate_then_cools_down_linearly():
    from compressor.utils import wsd

    assert [wsd(p, 0.2, 0.05) for p in (0.0, 0.5, 0.8)] == [1.0, 1.0, 1.0]
    assert wsd(0.9, 0.2, 0.05) == pytest.approx(0.525) and wsd(1.0, 0.2, 0.05) == pytest.approx(0.05)


@pytest.mark.slow
def test_wsd_schedule_of_a_run_and_of_a_cool_down_branched_from_its_constant_phase(tmp_path):
    ckpt = tmp_path / "ckpt"
    common = [*TINY, "--trainer.limit_val_batches", "0", "--model.schedule", "wsd", "--model.warmup_steps", "2",
              "--model.lr", "1e-3",
              "--model.min_lr_ratio", "0.1", "--trainer.enable_checkpointing", "true",
              "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint", f"--trainer.callbacks.dirpath={ckpt}",
              "--trainer.callbacks.every_n_train_steps=4", "--trainer.callbacks.save_top_k=-1"]
    run = run_cli(["fit", *common, "--trainer.max_steps", "10", "--trainer.default_root_dir", str(tmp_path / "long")])
    multiplier = run.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert [multiplier(s) for s in range(10)] == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 1, 1, 0.55])
    # The checkpoint at step 4 lies in the constant phase: resumed to 5 steps, it is the cool-down of a 5-step run.
    branch = run_cli(["fit", *common, "--trainer.max_steps", "5", "--trainer.default_root_dir", str(tmp_path / "short"),
                      "--ckpt_path", str(ckpt / "epoch=0-step=4.ckpt")])
    assert branch.trainer.global_step == 5
    assert branch.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(1e-4)  # lr 1e-3 x 0.1


def test_auto_precision_measures_every_cpu_path_and_keeps_the_fastest(capsys):
    from compressor.training.perf import CPU_PATHS, fastest_cpu_path
    from tests.conftest import tiny_model

    model = tiny_model()
    choice, rates = fastest_cpu_path(model, batch=2, min_time=0.05)
    assert set(rates) == set(CPU_PATHS) and all(r > 0 for r in rates.values())
    assert choice == max(rates, key=rates.get)
    assert {m.kernel for m in model.modules() if hasattr(m, "kernel")} == {"sdpa"}  # timed on a copy


@pytest.mark.slow
def test_cli_auto_precision_trains_in_the_precision_it_measured(tmp_path, capsys):
    run = run_cli(["fit", *TINY, "--auto_precision", "true", "--trainer.fast_dev_run", "1",
                   "--trainer.default_root_dir", str(tmp_path)])
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("auto_precision:"))
    assert line.split()[1] == run.trainer.precision in ("bf16-mixed", "32-true")
    kernels = {m.kernel for m in run.model.modules() if isinstance(m, Attention)}
    assert kernels == {line.split()[3]} and line.split()[4] == "attention"
    recorded = run.config["fit"]  # what config.yaml records: the precision and the kernel the run trained with
    assert recorded.attention_kernel == line.split()[3] and recorded.trainer.precision == line.split()[1]


def test_attention_kernel_set_in_the_config_is_the_one_that_trains(tmp_path):
    run = run_cli(["fit", *TINY, "--attention_kernel", "matmul", "--trainer.fast_dev_run", "1",
                   "--trainer.default_root_dir", str(tmp_path)])
    assert {m.kernel for m in run.model.modules() if isinstance(m, Attention)} == {"matmul"}
    with pytest.raises(SystemExit):
        run_cli(["fit", *TINY, "--attention_kernel", "flash", "--trainer.fast_dev_run", "1"])


def test_calibrate_ema_also_fits_the_whitening_of_whitened_fsq():
    from compressor.codec.decoders import ViTDecoder
    from compressor.codec.encoders import ViTEncoder
    from compressor.codec.quantizers import WhitenedFSQ

    torch.manual_seed(0)
    module = CompressorModule(ViTEncoder(dim=32, depth=1, heads=2), WhitenedFSQ(), ViTDecoder(dim=48, depth=1, heads=2))
    ema = module.ema.eval()
    with torch.no_grad():
        ema.pre_quant.bias += torch.tensor([3.0, -2.0, 0.5, 0.0, 1.0])
    frames = [torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8) for _ in range(3)]
    module._recent_frames.extend(frames)
    module.calibrate_ema()
    with torch.no_grad():
        z = torch.cat([ema.pre_quant(ema.encoder(f.float() / 127.5 - 1)).flatten(0, 1) for f in frames])
    norm = ema.quantizer.norm
    torch.testing.assert_close(norm.running_mean, z.mean(0), atol=1e-4, rtol=1e-4)
    assert int(norm.num_batches_tracked) == 3 and norm.momentum == 0.01 and not norm.training
