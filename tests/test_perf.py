import json
import time
import warnings

import pytest

import torch

from compressor.tools.bench_train import main as bench_train_main
from compressor.tools.bench_train import measure, to_markdown
from compressor.codec.layers import set_grad_checkpointing
from compressor.training.losses import ReconstructionLoss
from compressor.training.module import CompressorModule
from compressor.training.speed import apply_speed_options
from compressor.training.perf import matmul_peak_flops, train_flops_per_image
from tests.conftest import DECODERS, ENCODERS, QUANTIZERS, tiny_model


def _loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = ReconstructionLoss()(model(x)["recon"], x)["loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    for design in ("vit", "convstem"):
        model = tiny_model(design).train()
        x = torch.rand(2, 3, 128, 256) * 2 - 1
        loss, grads = _loss_and_grads(model, x)
        assert set_grad_checkpointing(model) == 2  # the encoder's and the decoder's transformer
        loss_gc, grads_gc = _loss_and_grads(model, x)
        assert torch.allclose(loss, loss_gc) and len(grads) == len(grads_gc)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_gc))


def _module(**speed_options):
    torch.manual_seed(0)
    module = CompressorModule(ENCODERS["convstem"](), QUANTIZERS["fsq"](), DECODERS["convstem"]())
    apply_speed_options(module, **speed_options)
    return module


def _train_forward(module, x):
    return (module.train_forward or module.autoencoder)(x)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model, **kwargs):
        def run(*args):
            raise RuntimeError("no backend here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    module = _module(compile=True)
    x = torch.rand(2, 3, 128, 256) * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _train_forward(module, x)
    assert any("continuing in eager mode" in str(w.message) for w in caught)
    assert torch.allclose(out["recon"], module.autoencoder(x)["recon"])
    assert _train_forward(module, x)["recon"].shape == x.shape  # and stays eager without retrying


def test_channels_last_and_checkpointing_options_train_the_same_function():
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    plain = _train_forward(_module(), frames.float() / 127.5 - 1)["recon"]
    module = _module(channels_last=True, grad_checkpointing=True)
    convs = [p for p in module.autoencoder.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x = (frames.float() / 127.5 - 1).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(_train_forward(module, x)["recon"], plain, atol=1e-5)


def test_flops_and_the_matmul_ceiling():
    model = tiny_model()
    linear_flops = 2 * 128 * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    flops = train_flops_per_image(model)
    assert 2.5 * linear_flops < flops < 6 * linear_flops  # forward + backward (~3x), plus attention matmuls
    assert all(p.grad is None for p in model.parameters())  # counted on a copy
    assert 1e8 < matmul_peak_flops("cpu", torch.float32, size=256, min_time=0.05) < 1e14  # 2 cores: ~1e11


@pytest.mark.slow
def test_training_benchmark_row_times_the_real_training_step_on_shards(tmp_path, video_dir):
    from compressor.tools.make_shards import main as make_shards

    shards = tmp_path / "shards"
    make_shards(["--input", video_dir, "--output", str(shards)])
    row = measure("demo", "demo.yaml", "cpu", batch=2, encode_batches=(1, 2), peak=1e11, path=("32-true", "matmul"),
                  grad_checkpointing=True, compile_model=False, with_encode=True, shards=str(shards), steps=3,
                  warmup=1, profile=True, min_time=0.05)
    assert row["train_images_per_s"] > 0 and row["loop_images_per_s"] > 0 and 0 < row["mfu"]
    assert row["encode_batch"] in (1, 2) and row["attention"] == "matmul" and "aten::" in row["profile"]
    md = to_markdown({"device": "cpu", "batch": 2, "ceilings_tflops": {"32-true": 0.1}, "compile": False,
                      "rows": [row]})
    assert "| demo | 32-true | matmul | on |" in md and "### Profile: demo" in md


@pytest.mark.slow
def test_training_benchmark_of_chosen_configs_on_two_paths(tmp_path):
    bench_train_main(["--config", "demo.yaml", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--min-time",
                      "0.05", "--path", "bf16-matmul", "fp32", "--output", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["precision"], r["attention"]) for r in result["rows"]] == [("bf16-mixed", "matmul"), ("32-true", "sdpa")]
    assert set(result["ceilings_tflops"]) == {"bf16-mixed", "32-true"}
    assert [(r["config"], r["file"], r["batch"], r["grad_checkpointing"]) for r in result["rows"]] == [
        ("demo", "demo.yaml", 2, False)] * 2


@pytest.mark.slow
def test_throughput_monitor_logs_mfu_during_fit(tmp_path):
    from tests.test_train import TINY, run_cli

    t0 = time.perf_counter()
    cli = run_cli(["fit", *TINY, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                   "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks+=compressor.training.callbacks.ThroughputMonitor",
                   "--trainer.callbacks.log_every_n_steps=1", "--trainer.callbacks.peak_tflops=0.05"])
    fit_seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    # Expected values from the model's shape, not from the code under test: a training step costs about 3x the
    # forward matmuls (2 FLOPs per multiply-add over 128 tokens), plus attention and the loss.
    model = cli.model.autoencoder
    linear = 2 * 128 * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    ips = metrics["perf/images_per_s"]
    assert 2.5 * linear < metrics["perf/tflops"] * 1e12 / ips < 6 * linear
    assert metrics["perf/mfu"] == pytest.approx(metrics["perf/tflops"] / 0.05, rel=1e-4)  # the peak given above
    assert ips > 2 / fit_seconds  # one step (batch 2) is shorter than the whole fit


@pytest.mark.slow
def test_kernel_benchmark_times_every_part(tmp_path):
    from compressor.tools.bench_kernels import main as bench_kernels_main

    bench_kernels_main(["--config", "demo.yaml", "--batch-size", "2", "--min-time", "0.01", "--output", str(tmp_path)])
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["part"].split(",")[0] for r in rows} == {"MS-SSIM loss", "attention", "AdamW step"}
    assert len([r for r in rows if r["part"].startswith("attention")]) == 2 * 2 * 2  # 2 stacks x 2 kernels x 2 dtypes
    assert all(r["ms"] > 0 for r in rows)


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16),
                                              ("32-true", torch.float32)])
def test_throughput_monitor_measures_the_ceiling_of_the_training_precision(monkeypatch, precision, dtype):
    # A 16-mixed GPU run's matmuls run in float16: against the float32 ceiling its MFU would read several times too high.
    from types import SimpleNamespace

    import compressor.training.callbacks as callbacks

    asked = []
    monkeypatch.setattr(callbacks, "train_flops_per_image", lambda model: 1.0)
    monkeypatch.setattr(callbacks, "matmul_peak_flops", lambda device, dt, **kw: asked.append(dt) or 1e12)
    module = SimpleNamespace(autoencoder=None, device=torch.device("cpu"))
    callbacks.ThroughputMonitor().on_fit_start(SimpleNamespace(precision=precision), module)
    assert asked == [dtype]


@pytest.mark.parametrize("causal", [False, True])
def test_attention_flops_are_counted_on_the_cpu_only_when_asked(causal):
    # On the CPU, SDPA runs as aten._scaled_dot_product_flash_attention_for_cpu, which torch 2.14 counts as 0 FLOPs;
    # flop_counter(attention=True) gives it torch's CUDA flash-attention formulas (causal not halved).
    from compressor.codec.layers import matmul_attention
    from compressor.training.perf import flop_counter

    B, h, N, d = 2, 3, 32, 16
    q, k, v = (torch.rand(B, h, N, d, requires_grad=True) for _ in range(3))

    def count(attention_fn, attention: bool) -> tuple[int, int]:
        with flop_counter(attention) as fc:
            out = attention_fn(q, k, v, is_causal=causal)
        forward = fc.get_total_flops()
        with flop_counter(attention) as fc:
            out.sum().backward()
        return forward, fc.get_total_flops()

    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert count(sdpa, attention=False) == (0, 0)  # the default: training budgets keep the old count
    forward, backward = count(sdpa, attention=True)
    assert forward == 4 * B * h * N * N * d  # q @ k^T and scores @ v, 2 FLOPs a multiply-add
    assert backward == 10 * B * h * N * N * d  # the scores recomputed, then four matmuls for dq, dk, dv
    # Written as explicit matmuls (the softmax counts 0 either way) it is the same, but for the recomputation.
    m_forward, m_backward = count(lambda q, k, v, is_causal: matmul_attention(q, k, v, is_causal), attention=False)
    assert m_forward == forward and m_backward == backward - 2 * B * h * N * N * d
