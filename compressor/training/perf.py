"""FLOPs of a training step, its measured speed in each precision, and the matmul ceiling (for
``callbacks.ThroughputMonitor``, the CLI's ``auto_precision`` and ``bench_train``).

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


def train_images_per_s(model: Autoencoder, batch: int, device: str, bf16: bool, min_time: float = 3.0,
                       compile_model: bool = False, warmup: int = 2) -> float:
    """Training images/s of ``model``: full steps (forward, loss, backward, AdamW) on random frames.

    The steps change ``model``'s weights; time a copy when they matter.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ReconstructionLoss()
    forward = model
    if compile_model:
        try:
            forward = torch.compile(model)
        except Exception:  # noqa: BLE001 - the eager model is the fallback
            forward = model
    x = torch.rand(batch, 3, *model.image_size, device=device) * 2 - 1
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def step():
        with torch.autocast(str(device).split(":")[0], torch.bfloat16, enabled=bf16):
            out = forward(x)
            loss = loss_fn(out["recon"].float(), x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):  # kernel selection, compilation, optimizer state
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < min_time:
        step()
        n += 1
    sync()
    return n * batch / (time.perf_counter() - t0)


def fastest_cpu_precision(model: Autoencoder, batch: int, min_time: float = 1.0) -> tuple[str, dict[str, float]]:
    """``"bf16-mixed"`` or ``"32-true"``, whichever trains ``model`` faster on this CPU, and both images/s.

    bf16 autocast is about twice fp32's speed on AMD EPYC CPUs with AVX-512 BF16, but 0.56x on an Intel Xeon that
    also has it (FACTS.md), so it is measured on a copy of the model rather than assumed.
    """
    probe = type(model).from_export(model.export_dict()).cpu().train()
    rates = {name: train_images_per_s(probe, batch, "cpu", bf16=name == "bf16-mixed", min_time=min_time, warmup=1)
             for name in ("bf16-mixed", "32-true")}
    return max(rates, key=rates.get), rates
