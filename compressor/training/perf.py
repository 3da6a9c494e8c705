"""FLOPs of a training step and the measured matmul ceiling (for ``callbacks.ThroughputMonitor`` and ``bench_train``).

Needs torch, einops and pytorch-msssim only, so the GPU benchmark runs on a stock CUDA PyTorch image.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

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
    with FlopCounterMode(display=False) as counter:
        out = probe(x)
        loss_fn(out["recon"], x)["loss"].backward()
    return float(counter.get_total_flops())


def matmul_peak_flops(device: str | torch.device, dtype: torch.dtype, size: int = 4096, min_time: float = 1.0) -> float:
    """The measured FLOP/s ceiling: a square matmul in ``dtype``, repeated for ``min_time`` seconds."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up (kernel selection)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        a @ b
        n += 1
        sync()
    return 2 * size**3 * n / (time.perf_counter() - t0)
