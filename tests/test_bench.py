import json
import subprocess
import sys

import pytest

from compressor.tools.bench import DESIGNS, RESOLUTIONS, build, measure, to_markdown


@pytest.mark.parametrize("design", DESIGNS)
def test_every_design_keeps_the_token_budget_at_every_size(design):
    for size in RESOLUTIONS:
        model = build(design, size)
        assert model.num_tokens == 128 and model.bytes_per_frame == 224 and model.image_size == size


def test_measure_reports_counted_flops_and_positive_speed():
    row = measure("vit", (128, 256), "cpu", batches=(1, 2), min_time=0.0)
    # encoder FLOPs of the ViT are dominated by its matmuls: 2 * params * tokens, to within attention and the
    # embedding; counted, not guessed.
    params = sum(p.numel() for p in build("vit", (128, 256)).encoder.parameters())
    assert row["params_encoder_m"] == pytest.approx(params / 1e6)
    assert 0.8 * 2 * params * 128 / 1e9 < row["gflops_encode"] < 1.5 * 2 * params * 128 / 1e9
    assert row["throughput_fps"] > 0 and row["latency_ms"] > 0 and row["best_batch"] in (1, 2)
    assert "| vit | 128x256 |" in to_markdown([row], "test")


@pytest.mark.slow
def test_bench_cli_writes_table_json_and_plot(tmp_path):
    run = subprocess.run([sys.executable, "-m", "compressor.tools.bench", "--designs", "vit", "conv", "--resolutions",
                          "128x256", "--batches", "1", "--min-time", "0", "--output", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["design"] for r in rows] == ["vit", "conv"]
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "| conv | 128x256 |" in (tmp_path / "bench.md").read_text()
