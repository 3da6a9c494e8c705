"""Training: a LightningModule over ``TokenWindows``, early stopping on held-out train cameras or videos, and the
checkpoint (``world_model.pt``: config, token format and weights) that scoring and generation load.

Resuming: ``train`` into an ``output`` that holds ``checkpoints/last.ckpt`` (written every ``checkpoint_minutes``,
at each early-stopping check and when the run ends) continues that run (Lightning's ``ckpt_path``): weights,
optimizer, step count, the best held-out checkpoint and early stopping's patience. ``max_minutes`` counts from this
invocation, and the learning rate continues where it was: no new warm-up (the step count is past it) and the cosine
goes on from the progress the run had reached, to its floor at the end of this invocation's minutes (or at
``max_steps``, whichever is first). ``max_steps`` counts all steps, those before the resume included.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from compressor.utils import atomic_write, cosine
from compressor.worldmodel.data import Segment, TokenFormat, TokenWindows
from compressor.codec.layers import set_attention_kernel
from compressor.worldmodel.model import WorldModel, WorldModelConfig

LN2 = math.log(2)


class WorldModelModule(pl.LightningModule):
    """Teacher-forced next-token cross-entropy on frames 2..T of each window (the first frame is context only).

    Args:
        config: the model (``WorldModelConfig``).
        lr: AdamW's peak learning rate.
        weight_decay: on matrices and embeddings only (not norms or biases).
        warmup_steps: linear warm-up, then cosine decay to 10% at ``max_steps``.
        max_steps: the schedule's length.
        max_minutes: this invocation's wall-time limit, if any: the schedule ends at whichever limit comes first.
        attention: the attention kernel (``compressor.codec.layers.ATTENTION_KERNELS``; speed only).
    """

    def __init__(self, config: dict, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100,
                 max_steps: int = 2000, max_minutes: float | None = None, attention: str = "sdpa"):
        super().__init__()
        self.save_hyperparameters()
        self.model = WorldModel(WorldModelConfig(**config))
        set_attention_kernel(self.model, attention)
        self._started: float | None = None
        self._resumed_progress = 0.0  # the schedule's progress when this invocation resumed a run

    def on_train_start(self) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        hp = self.hparams
        if hp.max_minutes and self._started is not None and time.monotonic() - self._started > 60 * hp.max_minutes:
            self.trainer.should_stop = True  # this invocation's clock (Lightning's max_time would count old runs')

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["schedule_progress"] = self.progress(self.global_step)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_progress = float(checkpoint.get("schedule_progress", 0.0))

    def progress(self, step: int) -> float:
        """How far through the cosine (0..1): by steps, or by wall time where ``max_minutes`` ends it sooner, so
        that a time-limited run still ends its decay (the same command fits a slower or faster machine). A resumed
        run goes on from the progress it had reached, to 1 at the end of this invocation's minutes."""
        hp = self.hparams
        done = max((step - hp.warmup_steps) / max(1, hp.max_steps - hp.warmup_steps), self._resumed_progress)
        if hp.max_minutes and self._started is not None:
            clock = (time.monotonic() - self._started) / (60 * hp.max_minutes)
            done = max(done, self._resumed_progress + (1 - self._resumed_progress) * clock)
        return min(1.0, done)

    def _common_step(self, window: torch.Tensor, stage: str) -> torch.Tensor:
        logp = self.model.window_log_probs(window)  # (B, T-1, N) nats
        loss = -logp.mean()
        self.log(f"{stage}/bits_per_token", loss.detach() / LN2, prog_bar=True, on_step=stage == "train",
                 on_epoch=stage != "train", batch_size=len(window))
        return loss

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._common_step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        rest = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=hp.lr, betas=(0.9, 0.95))

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            return cosine(self.progress(step), floor=0.1)

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                                                   "interval": "step"}}


def save(path: str, model: WorldModel, fmt: TokenFormat, extra: dict | None = None) -> None:
    """The trained model as one file: config, token format, weights (float32), and ``extra`` (training facts)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save({"config": model.config.to_dict(), "format": dataclasses.asdict(fmt),
                    "state_dict": {k: v.float() for k, v in model.state_dict().items()}, "extra": extra or {}}, tmp)


def load(path: str) -> tuple[WorldModel, TokenFormat, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = WorldModel(WorldModelConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    fmt = blob["format"]
    return model.eval(), TokenFormat(**{**fmt, "grid": tuple(fmt["grid"])}), blob.get("extra", {})


def train(train_segments: list[Segment], holdout: list[Segment], fmt: TokenFormat, config: WorldModelConfig,
          output: str, max_steps: int = 2000, max_minutes: float | None = None, batch_size: int = 8,
          lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100, val_every: int = 200,
          patience: int = 4, precision: str = "32-true", seed: int = 0, stride: int = 1,
          num_workers: int = 0, attention: str = "sdpa", checkpoint_minutes: float = 3.0,
          resume: bool = True) -> tuple[WorldModel, dict]:
    """Fit on windows of ``train_segments``; keep the weights of the best val bits/token on ``holdout`` (early
    stopping after ``patience`` checks without improvement), save them to ``output``/world_model.pt. Resumes the
    run in ``output`` where it has ``checkpoints/last.ckpt`` (the module's docstring says how).

    Args:
        train_segments: segments to cut training windows from (every start, shuffled).
        holdout: segments of held-out videos (windows every T frames) for early stopping; none: the last weights.
        fmt: their token format.
        config: the model.
        output: a run folder (Lightning's logs and checkpoints, and world_model.pt).
        max_steps: optimizer steps (also the cosine schedule's length).
        max_minutes: stop after this wall time, whichever comes first.
        batch_size: windows per step.
        lr: peak learning rate.
        weight_decay: AdamW's.
        warmup_steps: linear warm-up steps.
        val_every: steps between validations.
        patience: validations without improvement before stopping.
        precision: Lightning's ("32-true" or "bf16-mixed": measure which is faster on the machine).
        seed: the seed of weights and shuffles.
        stride: frames between training window starts.
        num_workers: DataLoader workers.
        attention: the attention kernel ("sdpa" or "matmul": speed only, reports/world-model/bench-step.md).
        checkpoint_minutes: wall minutes between saves of ``checkpoints/last.ckpt`` (what a kill loses).
        resume: continue from ``checkpoints/last.ckpt`` when it exists.
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    pl.seed_everything(seed, workers=True)
    module = WorldModelModule(config.to_dict(), lr, weight_decay, warmup_steps, max_steps, max_minutes, attention)
    train_dl = DataLoader(TokenWindows(train_segments, config.context_frames, stride), batch_size=batch_size,
                          shuffle=True, drop_last=True, num_workers=num_workers)
    val_ds = TokenWindows(holdout, config.context_frames, config.context_frames)
    val_dl = DataLoader(val_ds, batch_size=batch_size) if len(val_ds) else None
    ckpt_dir = os.path.join(output, "checkpoints")
    last = os.path.join(ckpt_dir, "last.ckpt")
    callbacks = []
    if val_dl is not None:
        ckpt = ModelCheckpoint(dirpath=ckpt_dir, monitor="val/bits_per_token", mode="min", save_top_k=1,
                               filename="best", save_last=True, enable_version_counter=False)
        callbacks += [ckpt, EarlyStopping("val/bits_per_token", patience=patience, mode="min")]
    # Every few wall minutes: last.ckpt (no monitor: it only keeps the newest), so a kill loses little.
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, enable_version_counter=False,
                                     train_time_interval=datetime.timedelta(minutes=checkpoint_minutes)))
    resume_from = last if resume and os.path.exists(last) else None
    val_every = min(val_every, len(train_dl))
    trainer = pl.Trainer(max_steps=max_steps, precision=precision, accelerator="cpu", callbacks=callbacks,
                         default_root_dir=output,
                         val_check_interval=val_every if val_dl is not None else None,
                         check_val_every_n_epoch=None if val_dl is not None else 1, log_every_n_steps=10,
                         logger=pl.loggers.CSVLogger(output, name="logs"), enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=1.0 if val_dl is not None else 0)
    if resume_from:
        print(f"resuming {resume_from}")
    trainer.fit(module, train_dl, val_dl, ckpt_path=resume_from)
    trainer.save_checkpoint(last)  # where the run ended (a time or early stop too), for the next resume
    facts = {"steps": trainer.global_step, "train_windows": len(train_dl.dataset), "holdout_windows": len(val_ds),
             "holdout_sources": sorted({s.source for s in holdout}), "precision": precision, "attention": attention,
             "resumed_from": resume_from}
    if val_dl is not None and callbacks[0].best_model_path:
        best = WorldModelModule.load_from_checkpoint(callbacks[0].best_model_path, map_location="cpu")
        module = best
        facts["best_val_bits_per_token"] = float(callbacks[0].best_model_score)
    model = module.model.float().eval()
    save(os.path.join(output, "world_model.pt"), model, fmt, facts)
    return model, facts
