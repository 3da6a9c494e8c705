"""The training step's parts, each timed alone at the recipe's shapes: the MS-SSIM loss (pytorch-msssim, the
fused-moment form eager and compiled), attention (SDPA against matmul, per precision) and AdamW (foreach against
fused). The numbers behind ``docs/speed.md``'s choices; ``bench_train`` times the whole step.

    python -m compressor.tools.bench_kernels --output reports/bench-kernels
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from compressor.benchmark import cpu_flags, device_name, seconds_per_call, write_report
from compressor.codec.layers import matmul_attention
from compressor.metrics import ms_ssim_unit
from compressor.tools.bench_train import model_from_config
from compressor.training.losses import compiled_ms_ssim


def _ms(fn, min_time: float) -> float:
    return 1e3 * seconds_per_call(fn, min_time, warmup=2)


def loss_rows(batch: int, image_size: tuple[int, int], min_time: float) -> list[dict]:
    """Forward and backward of MS-SSIM on a (batch, 3, H, W) reconstruction, per implementation."""
    from pytorch_msssim import ms_ssim

    torch.manual_seed(0)
    target = torch.rand(batch, 3, *image_size)
    recon = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).requires_grad_()
    impls = {"pytorch-msssim 1.0 (five blurs per scale, depthwise conv)":
             lambda x, y: ms_ssim(x, y, data_range=1.0, size_average=False, win_size=7),
             "fused moments, eager": ms_ssim_unit, "fused moments, torch.compile": compiled_ms_ssim()}
    rows = []
    for name, fn in impls.items():
        def step():
            recon.grad = None
            fn(recon, target).mean().backward()
        rows.append({"part": "MS-SSIM loss", "variant": name, "ms": _ms(step, min_time)})
    return rows


def attention_rows(batch: int, shapes: dict[str, tuple[int, int, int]], min_time: float) -> list[dict]:
    """Forward and backward of one attention call per (heads, tokens, head width), kernel and precision."""
    rows = []
    for label, (heads, tokens, width) in shapes.items():
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v = (torch.randn(batch, heads, tokens, width, dtype=dtype, requires_grad=True) for _ in range(3))
            for kernel, fn in (("sdpa", F.scaled_dot_product_attention), ("matmul", matmul_attention)):
                def step():
                    for t in (q, k, v):
                        t.grad = None
                    fn(q, k, v).float().sum().backward()
                rows.append({"part": f"attention, {label}", "variant": f"{kernel}, {str(dtype).split('.')[-1]}",
                             "ms": _ms(step, min_time)})
    return rows


def adamw_rows(config: str, min_time: float) -> list[dict]:
    """One AdamW step over the model's parameters (random gradients), foreach against fused."""
    params = list(model_from_config(config).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    rows = []
    for fused in (False, True):
        opt = torch.optim.AdamW(params, lr=1e-4, fused=fused)
        rows.append({"part": "AdamW step", "variant": "fused" if fused else "foreach", "ms": _ms(opt.step, min_time)})
    return rows


def to_markdown(result: dict) -> str:
    lines = [f"{result['device']}; CPU flags {', '.join(result['cpu']['flags'])}; batch {result['batch']}; "
             "forward + backward per call (AdamW: one step).", "", "| part | variant | ms |", "|---|---|---:|"]
    lines += [f"| {r['part']} | {r['variant']} | {r['ms']:.1f} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.bench_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="base.yaml", help="configs/ file whose model's shapes are timed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per timing")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--output", default=None, help="directory for bench.json and bench.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = model_from_config(args.config)
    grid = model.num_tokens
    shapes = {}
    for part in (model.encoder, model.decoder):
        block = next((m for m in part.modules() if hasattr(m, "heads")), None)
        if block is not None:
            width = block.qkv.in_features // block.heads
            shapes[f"{type(part).__name__} ({block.heads} heads x {grid} tokens x {width})"] = (block.heads, grid, width)
    rows = loss_rows(args.batch_size, model.image_size, args.min_time)
    rows += attention_rows(args.batch_size, shapes, args.min_time)
    rows += adamw_rows(args.config, args.min_time)
    result = {"device": device_name("cpu", args.threads), "cpu": cpu_flags(), "batch": args.batch_size, "rows": rows}
    md = to_markdown(result)
    print(md)
    if args.output:
        write_report(args.output, "bench", result, md)


if __name__ == "__main__":
    main()
