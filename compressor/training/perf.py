"""FLOPs of a training step (Lightning's ``measure_flops``) and the measured matmul ceiling, for
``callbacks.ThroughputMonitor`` and ``bench_train``."""

from __future__ import annotations

import torch
from lightning_fabric.utilities.throughput import measure_flops

from compressor.benchmark import seconds_per_call
from compressor.codec.autoencoder import Autoencoder
from compressor.training.losses import ReconstructionLoss


def train_flops_per_image(model: Autoencoder, image_size: tuple[int, int] | None = None) -> float:
    """FLOPs of one training step per image (forward, reconstruction loss, backward), counted once.

    Counted on a CPU copy at batch 1, so the model and its gradients are untouched.
    """
    h, w = image_size or model.image_size
    probe = type(model).from_export(model.export_dict()).cpu().train()
    x = torch.rand(1, 3, h, w) * 2 - 1
    loss_fn = ReconstructionLoss()
    return float(measure_flops(probe, lambda: probe(x), lambda out: loss_fn(out["recon"], x)["loss"]))


def matmul_peak_flops(device: str | torch.device, dtype: torch.dtype, size: int = 4096, min_time: float = 1.0) -> float:
    """The measured FLOP/s ceiling: a square matmul in ``dtype``, repeated for ``min_time`` seconds."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / seconds_per_call(lambda: a @ b, min_time)  # after a warm-up call (kernel selection)
