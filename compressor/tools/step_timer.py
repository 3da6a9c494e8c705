"""Timing (and optionally profiling) the training step that ``train.py fit`` runs: the LightningModule's
``training_step`` (forward, loss, backward, optimizer, EMA) inside a real Trainer, on the configured data.

``bench_train`` measures every row this way, so its images/s is the step a run gets, not a hand-made copy of it.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch

from compressor.codec.layers import set_attention_kernel
from compressor.training.cli import cli
from compressor.training.speed import apply_speed_options


class StepTimer(pl.Callback):
    """Seconds of each training step after ``warmup`` steps (batch start to batch end, as ``ThroughputMonitor``
    measures it: data loading excluded), the loop's wall time over the same steps (data loading included), and a
    ``torch.profiler`` table of ``profile_steps`` steps after the warm-up."""

    def __init__(self, warmup: int, profile_steps: int = 0):
        self.warmup, self.profile_steps = warmup, profile_steps
        self.step_seconds: list[float] = []
        self.loop_start = self.loop_end = None
        self.profile_table: str | None = None
        self._t0 = 0.0
        self._profiler = None

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.loop_start = self._t0
            if self.profile_steps:
                self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                    [torch.profiler.ProfilerActivity.CUDA] if pl_module.device.type == "cuda" else []))
                self._profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        now = time.perf_counter()
        step = trainer.global_step - 1  # the step that just ran
        if step >= self.warmup:
            self.step_seconds.append(now - self._t0)
            self.loop_end = now
        if self._profiler is not None and step + 1 == self.warmup + self.profile_steps:
            self._profiler.__exit__(None, None, None)
            self.profile_table = self._profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            self._profiler = None


def fit_step_rate(configs: list[str], batch: int, device: str, precision: str, attention: str = "sdpa",
                  steps: int = 20, warmup: int = 5, shards: str | None = None, compile_model: bool = False,
                  grad_checkpointing: bool = False, profile_steps: int = 0,
                  overrides: list[str] | None = None) -> dict:
    """Train the model ``configs`` resolve to (on ``configs/base.yaml``) for ``warmup + steps`` steps of ``batch``
    frames from ``shards`` (procedural frames when None) and time the last ``steps``.

    Returns ``step_images_per_s`` (as ``ThroughputMonitor`` logs it), ``loop_images_per_s`` (data loading
    included) and, with ``profile_steps``, the profiler's ``profile`` table.
    """
    with tempfile.TemporaryDirectory() as root:
        args = [a for c in configs for a in ("--config", c)] + [
            "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.max_steps={warmup + steps}",
            "--trainer.limit_val_batches=0", f"--trainer.precision={precision}", "--auto_precision=false",
            f"--trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}", "--trainer.devices=1",
            f"--trainer.default_root_dir={root}", f"--data.batch_size={batch}",
            *([f"--data.shards={shards}"] if shards else []), *(f"--{o}" for o in overrides or [])]
        run = cli(args, run=False)
        set_attention_kernel(run.model, attention)
        apply_speed_options(run.model, compile=compile_model, grad_checkpointing=grad_checkpointing)
        timer = StepTimer(warmup, profile_steps)
        run.trainer.callbacks[:] = [timer]  # nothing else: no export, checkpoint, curve or progress bar
        run.trainer.fit(run.model, datamodule=run.datamodule)
    if not timer.step_seconds:
        raise RuntimeError(f"no timed steps: the data ended before step {warmup + 1}")
    loop = timer.loop_end - timer.loop_start
    return {"step_images_per_s": batch / statistics.mean(timer.step_seconds),
            "step_seconds_median": statistics.median(timer.step_seconds),
            "loop_images_per_s": batch * len(timer.step_seconds) / loop if loop > 0 else None,
            "timed_steps": len(timer.step_seconds), "profile": timer.profile_table,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def loader_images_per_s(configs: list[str], batch: int, shards: str | None, batches: int = 30,
                        overrides: list[str] | None = None) -> float:
    """Images/s of the training data loader alone (the configured workers), after its first batch."""
    args = [a for c in configs for a in ("--config", c)] + ["--trainer.logger=false", f"--data.batch_size={batch}",
                                                              *([f"--data.shards={shards}"] if shards else []),
                                                              *(f"--{o}" for o in overrides or [])]
    datamodule = cli(args, run=False).datamodule
    datamodule.setup("fit")
    it = iter(datamodule.train_dataloader())
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it))
        except StopIteration:
            break
    return n / (time.perf_counter() - t0)
