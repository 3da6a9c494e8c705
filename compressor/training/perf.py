"""FLOPs of a training step (torch's ``FlopCounterMode``, grouped-conv backward corrected), its measured speed on each
CPU path (precision and attention kernel), and the matmul ceiling (for ``callbacks.ThroughputMonitor``, the CLI's
``auto_precision`` and ``bench_train``)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop, sdpa_backward_flop, sdpa_flop

from compressor.benchmark import seconds_per_call
from compressor.codec.autoencoder import Autoencoder
from compressor.codec.layers import set_attention_kernel
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


def flop_counter(attention: bool = False) -> FlopCounterMode:
    """torch's ``FlopCounterMode`` with grouped convolutions' backward counted right (``_conv_backward_flop``).

    ``attention``: also count ``scaled_dot_product_attention`` on the CPU. There it runs as
    ``aten._scaled_dot_product_flash_attention_for_cpu`` (and ``..._backward``), which torch 2.14's counter has no
    formula for, so it counts as 0 FLOPs; with True it gets torch's own formulas for the CUDA flash attention: forward
    4·B·h·N²·d (two matmuls, causal not halved), backward 10·B·h·N²·d (the scores recomputed, then four matmuls).
    Off by default: ``train_flops_per_image`` sets every experiment's ``--flops`` image budget, and counting
    attention there would change the budgets of runs already compared. The matmul kernel
    (``layers.matmul_attention``) is counted either way.
    """
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    if attention:
        # The formulas on shapes, under torch's shape wrapper (FlopCounterMode wraps custom formulas itself).
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = sdpa_flop.__wrapped__
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward] = sdpa_backward_flop.__wrapped__
    return FlopCounterMode(display=False, custom_mapping=mapping)


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
                       compile_model: bool = False, warmup: int = 2, attention: str | None = None) -> float:
    """Training images/s of ``model``: full steps (forward, loss, backward, fused AdamW) on random frames.

    ``attention``: the attention kernel to time (``layers.set_attention_kernel``; None: as the model is set). The
    steps change ``model``'s weights; time a copy when they matter.
    """
    if attention is not None:
        set_attention_kernel(model, attention)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
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


# The training paths a CPU run chooses among: (trainer precision, attention kernel).
CPU_PATHS = (("bf16-mixed", "matmul"), ("bf16-mixed", "sdpa"), ("32-true", "sdpa"))


def fastest_cpu_path(model: Autoencoder, batch: int, min_time: float = 1.0,
                     paths: list[tuple[str, str]] | tuple = CPU_PATHS
                     ) -> tuple[tuple[str, str], dict[tuple[str, str], float]]:
    """The (precision, attention kernel) of ``paths`` (default ``CPU_PATHS``) that trains ``model`` fastest on this
    CPU, and the images/s of each.

    Which wins depends on the CPU, not on its vendor (docs/speed.md): bf16 autocast is about twice float32 on AMD
    EPYC with AVX-512 BF16; on an Intel Xeon with AMX, bf16 matmuls are 8x float32's but SDPA's bf16 backward is
    slower than its float32 one, so bf16 pays there only with matmul attention; a CPU without AVX-512 BF16 has no
    fast bf16 kernels at all. So it is measured on a copy of the model rather than assumed.
    """
    probe = type(model).from_export(model.export_dict()).cpu().train()
    rates = {(precision, attention): train_images_per_s(probe, batch, "cpu", bf16=precision == "bf16-mixed",
                                                        min_time=min_time, warmup=1, attention=attention)
             for precision, attention in paths}
    return max(rates, key=rates.get), rates
