"""LightningModule that trains an Autoencoder: AdamW + warm-up then cosine or WSD, clipping, EMA, logging.

What it is trained against is ``model.loss`` (``losses.CompressionLoss``); how fast it runs (compile,
channels-last, gradient checkpointing) is the ``speed.SpeedOptions`` callback's business.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from compressor.codec.autoencoder import Autoencoder
from compressor.metrics import model_psnr, ms_ssim_01
from compressor.training.core import calibrate_ema, ema_copy, optimizers, param_groups, update_ema
from compressor.training.losses import CompressionLoss
from compressor.utils import to_uint8, to_unit, token_entropy_bits


class CompressorModule(pl.LightningModule):
    """Trains encoder -> quantizer -> decoder on uint8 frame batches (B, 3, H, W).

    Validation, test and export use the EMA copy of the weights. Optimisation is manual so that the optional
    discriminator can be updated in the same step without doubling ``global_step``.

    Args:
        encoder: ``ViTEncoder``, ``ConvStemEncoder`` or ``ConvEncoder``.
        quantizer: ``FSQ``, ``StandardizedFSQ``, ``WhitenedFSQ`` or ``VQ``.
        decoder: ``ViTDecoder``, ``ViTRefineDecoder``, ``ViTOverlapDecoder``, ``ConvUpsampleDecoder`` or ``ConvDecoder``.
        loss: the objective; ``CompressionLoss()`` (L1 + MSE + 0.2 (1 - MS-SSIM)) when not given.
        image_size: (H, W) of training frames (linked to ``data.image_size`` by ``train.py``).
        max_bytes_per_frame: token budget asserted by the autoencoder.
        lr: peak learning rate.
        weight_decay: AdamW decay on matrices (not on norms, biases or codebooks).
        betas: AdamW betas.
        warmup_steps: linear warm-up length.
        min_lr_ratio: the schedule decays to ``lr * min_lr_ratio``.
        schedule: after warm-up, ``"cosine"`` (half-cosine over the run) or ``"wsd"`` (constant, then a linear
            cool-down over the last ``cooldown_fraction`` of the steps). A WSD checkpoint from the constant phase
            resumed with a smaller ``trainer.max_steps`` is the cool-down of that shorter run.
        cooldown_fraction: share of the steps in WSD's cool-down.
        grad_clip: max gradient norm.
        ema_decay: EMA decay; an early-step ramp keeps the EMA from lagging behind a fresh model.
        time_budget_s: when set, the cosine follows training wall-clock time instead of steps, reaching its floor
            at this many seconds. For equal-compute comparisons; pair it with ``trainer.max_time``.
        calibration_batches: recent training batches on which the EMA model's normalization statistics are
            re-estimated before validation and export (see ``calibrate_ema``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: nn.Module,
        loss: CompressionLoss = lazy_instance(CompressionLoss),
        image_size: tuple[int, int] = (128, 256),
        max_bytes_per_frame: int = 224,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.05,
        schedule: Literal["cosine", "wsd"] = "cosine",
        cooldown_fraction: float = 0.2,
        grad_clip: float = 1.0,
        ema_decay: float = 0.999,
        time_budget_s: float | None = None,
        calibration_batches: int = 8,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "quantizer", "decoder", "loss"])
        self.automatic_optimization = False
        self.autoencoder = Autoencoder(encoder, quantizer, decoder, image_size, max_bytes_per_frame)
        self.ema = ema_copy(self.autoencoder)
        self.loss = loss
        # Set by speed.SpeedOptions: a compiled forward (a plain object, so its weights, the autoencoder's, are
        # not registered twice) and the memory format of input batches.
        self.train_forward: Callable[[Tensor], dict[str, Tensor]] | None = None
        self.channels_last = False
        self._val_counts: Tensor | None = None
        self._recent_frames: deque[Tensor] = deque(maxlen=calibration_batches)
        self._train_seconds = 0.0  # training time before this process started (restored on resume)
        self._t_start: float | None = None

    # ---- steps --------------------------------------------------------------------------------------------
    def _common_step(self, frames: Tensor, stage: str) -> dict[str, Tensor]:
        """frames: uint8 (B, 3, H, W). Returns the loss terms and outputs; logs ``{stage}/{name}``."""
        x = to_unit(frames)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if stage == "train":
            out = (self.train_forward or self.autoencoder)(x)
        else:
            out = self.ema(x)
        terms = self.loss(out["recon"], x, out["quant_loss"], self.global_step if stage == "train" else None)
        with torch.no_grad():
            terms["psnr"] = model_psnr(out["recon"], x).mean()
        on_step = stage == "train"
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value.detach(), on_step=on_step, on_epoch=not on_step,
                     prog_bar=name in ("loss", "psnr"), sync_dist=not on_step, batch_size=len(frames))
        return {**terms, "recon": out["recon"], "tokens": out["tokens"], "x": x}

    def training_step(self, frames: Tensor, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        out = self._common_step(frames, "train")
        self._recent_frames.append(frames.detach())
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out["loss"])
        if self.loss.gan_active(self.global_step):
            discriminator = self.loss.discriminator
            # The generator's adversarial term also reaches the discriminator; drop that before its own loss.
            for p in discriminator.parameters():
                p.grad = None
            d_loss = self.loss.discriminator_loss(out["x"], out["recon"])
            self.manual_backward(d_loss)
            torch.nn.utils.clip_grad_norm_(discriminator.parameters(), self.hparams.grad_clip)
            self.log("train/gan_d", d_loss.detach(), on_step=True)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.autoencoder.parameters(), self.hparams.grad_clip)
        opt.step()
        sched.step()
        self._update_ema()
        self.log("train/grad_norm", grad_norm, on_step=True)
        self.log("train/lr", sched.get_last_lr()[0], on_step=True)
        return out["loss"].detach()

    def on_train_start(self) -> None:
        self._t_start = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        # The frame shards derive their order from the epoch (and, after a resume, skip what was trained on).
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def train_seconds(self) -> float:
        """Wall-clock training time so far, across resumes."""
        return self._train_seconds + (time.perf_counter() - self._t_start if self._t_start else 0.0)

    def _update_ema(self) -> None:
        update_ema(self.ema, self.autoencoder, self.global_step, self.hparams.ema_decay)

    def calibrate_ema(self) -> None:
        """Re-estimate the EMA model's normalization statistics on its own encoder outputs over the last
        ``calibration_batches`` training batches (``core.calibrate_ema`` says why)."""
        context = self.trainer.precision_plugin.forward_context() if self._trainer is not None else None
        calibrate_ema(self.ema, self._recent_frames, lambda frames: self.ema.encode_to_codes(to_unit(frames)),
                      context)

    def on_validation_epoch_start(self) -> None:
        self.calibrate_ema()
        self._val_counts = torch.zeros(self.ema.codebook_size, device=self.device, dtype=torch.float64)

    def validation_step(self, frames: Tensor, batch_idx: int) -> None:
        out = self._common_step(frames, "val")
        self.log("val/ms_ssim_score", ms_ssim_01(out["recon"], out["x"]).mean(), on_epoch=True, sync_dist=True,
                 batch_size=len(frames))
        self._val_counts += torch.bincount(out["tokens"].flatten(), minlength=self.ema.codebook_size)
        if batch_idx == 0:
            self._log_recon_grid(out["x"], out["recon"])

    def on_validation_epoch_end(self) -> None:
        counts = self._val_counts
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        self.log("val/codebook_usage", (counts > 0).double().mean().float(), rank_zero_only=True)
        self.log("val/token_entropy_bits", token_entropy_bits(counts).float(), rank_zero_only=True)

    def test_step(self, frames: Tensor, batch_idx: int) -> None:
        out = self._common_step(frames, "test")
        self.log("test/ms_ssim_score", ms_ssim_01(out["recon"], out["x"]).mean(), on_epoch=True, sync_dist=True)

    def _log_recon_grid(self, x: Tensor, recon: Tensor, n: int = 4) -> None:
        logger = self.logger
        if logger is None or not hasattr(logger, "log_image") or self.global_rank != 0:
            return
        grid = torch.cat([x[:n], recon[:n].clamp(-1, 1)], dim=2)  # original above, reconstruction below
        images = [to_uint8(g.float()).permute(1, 2, 0).cpu().numpy() for g in grid]
        logger.log_image("val/recon", images, step=self.global_step)  # wandb needs uint8

    # ---- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = param_groups(self.autoencoder.named_parameters(), self.hparams.weight_decay)
        if self.loss.discriminator is not None:
            groups.append({"params": list(self.loss.discriminator.parameters()), "weight_decay": 0.0})
        hp = self.hparams
        budget = hp.time_budget_s  # the cosine follows wall-clock time instead of steps
        return optimizers(groups, self.trainer, hp.lr, hp.betas, hp.warmup_steps, hp.min_lr_ratio,
                          schedule=hp.schedule, cooldown_fraction=hp.cooldown_fraction,
                          progress=(lambda: self.train_seconds() / budget) if budget else None)

    # ---- export -------------------------------------------------------------------------------------------
    def exported(self) -> tuple[nn.Module, str]:
        """What a user codes with (``ExportCallback``): the EMA model, its statistics calibrated, as ``model.pt``."""
        self.calibrate_ema()  # the last steps may have come after the last validation
        return self.ema.eval(), "model.pt"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A weights-only export of the EMA model rides along, so compressor.load() reads .ckpt files too.
        self.calibrate_ema()
        checkpoint["compressor"] = self.ema.export_dict()
        checkpoint["train_seconds"] = self.train_seconds()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._train_seconds = checkpoint.get("train_seconds", 0.0)
        # Before the loss was a module of its own, its parts sat at the top level of the checkpoint.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(("perceptual.", "discriminator."))]:
            state[f"loss.{key}"] = state.pop(key)
