"""FLOPs of a training step (torch's ``FlopCounterMode``, grouped-conv backward corrected), its measured speed in each
precision, and the matmul ceiling (for ``callbacks.ThroughputMonitor``, the CLI's ``auto_precision`` and
``bench_train``)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

from compressor.benchmark import seconds_per_call
from compressor.codec.autoencoder import Autoencoder
from compressor.training.losses import ReconstructionLoss
from compressor.training.speed import EagerFallback


def train_flops_per_image(model: Autoencoder, image_size: tuple[int, int] | None = None) -> float:
    """FLOPs of one training step per image (forward, reconstruction loss, backward), counted once.

    Counted on a CPU copy at batch 1, so the model and its gradients are untouched.
    """
    h, w = image_size or model.image_size
    probe = type(model).from_export(model.export_dict()).cpu().train()
    x = torch.rand(1, 3, h, w) * 2 - 1
    loss_fn = ReconstructionLoss()
    with flop_counter() as fc:
        loss_fn(probe(x)["recon"], x)["loss"].backward()
    return float(fc.get_total_flops())


def flop_counter() -> FlopCounterMode:
    """torch's ``FlopCounterMode`` with grouped convolutions' backward counted right (``_conv_backward_flop``)."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding,
                        groups, output_mask, out_shape, **kwargs) -> int:
    """torch's count of a convolution's backward with the weight gradient divided by ``groups``: torch 2.14 counts it
    as a dense convolution, so a 1024-channel depthwise 3x3 conv's backward read as 1000x its forward. Ungrouped
    convolutions count as before."""
    torch_formula = conv_backward_flop.__wrapped__  # the formula on shapes, under torch's shape wrapper
    args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding, groups)
    grad_input = torch_formula(*args, [output_mask[0], False], out_shape=out_shape, **kwargs)
    grad_weight = torch_formula(*args, [False, output_mask[1]], out_shape=out_shape, **kwargs)
    return grad_input + grad_weight // groups


def matmul_peak_flops(device: str | torch.device, dtype: torch.dtype, size: int = 4096, min_time: float = 1.0) -> float:
    """The measured FLOP/s ceiling: a square matmul in ``dtype``, repeated for ``min_time`` seconds."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / seconds_per_call(lambda: a @ b, min_time)  # after a warm-up call (kernel selection)


def train_images_per_s(model: Autoencoder, batch: int, device: str, bf16: bool, min_time: float = 3.0,
                       compile_model: bool = False, warmup: int = 2) -> float:
    """Training images/s of ``model``: full steps (forward, loss, backward, AdamW) on random frames.

    The steps change ``model``'s weights; time a copy when they matter.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ReconstructionLoss()
    forward = EagerFallback(model) if compile_model else model  # torch.compile fails at the first call, if at all
    x = torch.rand(batch, 3, *model.image_size, device=device) * 2 - 1

    def step():
        with torch.autocast(str(device).split(":")[0], torch.bfloat16, enabled=bf16):
            out = forward(x)
            loss = loss_fn(out["recon"].float(), x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / seconds_per_call(step, min_time, warmup)  # warm-up: kernel selection, compilation, optimizer


def fastest_cpu_precision(model: Autoencoder, batch: int, min_time: float = 1.0) -> tuple[str, dict[str, float]]:
    """``"bf16-mixed"`` or ``"32-true"``, whichever trains ``model`` faster on this CPU, and both images/s.

    bf16 autocast is about twice fp32's speed on AMD EPYC CPUs with AVX-512 BF16, but 0.56x on an Intel Xeon that
    also has it (FACTS.md), so it is measured on a copy of the model rather than assumed.
    """
    probe = type(model).from_export(model.export_dict()).cpu().train()
    rates = {name: train_images_per_s(probe, batch, "cpu", bf16=name == "bf16-mixed", min_time=min_time, warmup=1)
             for name in ("bf16-mixed", "32-true")}
    return max(rates, key=rates.get), rates
