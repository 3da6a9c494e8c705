"""Speed options for training, as a callback: they change how fast a step runs, never what it computes.

    trainer:
      callbacks:
        - class_path: compressor.training.speed.SpeedOptions
          init_args: {compile: true, channels_last: true}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor

from compressor.codec.layers import set_grad_checkpointing


class EagerFallback:
    """``torch.compile(model)`` that falls back to eager ``model`` for good at the first compile failure.

    A missing backend or a graph break makes training slower, not wrong, so it warns instead of stopping a run.
    A plain object rather than an ``nn.Module``, so the model's weights are not registered a second time.
    ``model`` may be any function of tensors (the loss compiles ``metrics.ms_ssim_unit`` this way).
    """

    def __init__(self, model: Callable, **compile_options):
        self.model = model
        self.compiled = torch.compile(model, **compile_options)

    def __call__(self, *args: Tensor):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001  any backend failure
                # An error that eager raises too (bad input, out of memory) is the caller's, not the compiler's:
                # it propagates and compiling stays on (the loss's compiled MS-SSIM is shared by the whole process).
                out = self.model(*args)
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); continuing in eager mode")
                self.compiled = None
                return out
        return self.model(*args)


class SpeedOptions(pl.Callback):
    """Applies speed options to a ``CompressorModule`` when fitting starts.

    Args:
        compile: run the training forward through ``torch.compile`` (eager if compiling fails).
        channels_last: keep conv weights and input batches channels-last (faster convolutions on GPUs).
        grad_checkpointing: recompute transformer blocks in the backward pass (less memory, ~30% more compute).
    """

    def __init__(self, compile: bool = False, channels_last: bool = False, grad_checkpointing: bool = False):
        self.compile, self.channels_last, self.grad_checkpointing = compile, channels_last, grad_checkpointing

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        apply_speed_options(pl_module, self.compile, self.channels_last, self.grad_checkpointing)


def apply_speed_options(module: pl.LightningModule, compile: bool = False, channels_last: bool = False,
                        grad_checkpointing: bool = False) -> None:
    """What ``SpeedOptions`` does, for use without a Trainer (benchmarks, tests)."""
    if grad_checkpointing:
        set_grad_checkpointing(module.autoencoder)
    if channels_last:
        module.autoencoder.to(memory_format=torch.channels_last)
        module.ema.to(memory_format=torch.channels_last)
        module.channels_last = True
    if compile:
        module.train_forward = EagerFallback(module.autoencoder)
