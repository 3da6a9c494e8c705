import json
import math
import subprocess
import sys

import pytest
import torch

from compressor.evaluate import evaluate, frame_ms_ssim, frame_psnr, token_stats
from compressor.video import list_videos
from tests.conftest import tiny_model


def test_psnr_of_known_error():
    frames = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    recon = frames + 10  # MSE 100 -> 10*log10(255^2/100) = 28.13 dB
    assert frame_psnr(recon, frames).item() == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-4)


def test_ms_ssim_of_identical_frames_is_one():
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    assert torch.allclose(frame_ms_ssim(frames, frames), torch.ones(2), atol=1e-5)


def test_token_stats():
    counts = torch.tensor([2.0, 2.0, 0.0, 0.0])
    assert token_stats(counts) == {"codebook_usage": 0.5, "token_entropy_bits": 1.0}


def test_evaluate_on_generated_clips(video_dir, tmp_path):
    report = evaluate(tiny_model(), list_videos(video_dir)[:2], batch_size=5)
    assert report["overall"]["frames"] == 24 and report["overall"]["bytes_per_frame"] == 224
    model_path = tmp_path / "m.pt"
    tiny_model().save(model_path)
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "compressor.evaluate", "--checkpoint", str(model_path), "--input",
                    video_dir, "--output", str(out)], check=True, capture_output=True)
    saved = json.loads((out / "report.json").read_text())
    assert saved["overall"]["frames"] == 60 and len(saved["clips"]) == 5
    assert "| clip |" in (out / "report.md").read_text()
