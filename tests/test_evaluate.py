import json
import subprocess
import sys

import pytest
import torch
import webdataset as wds

from compressor.tools.evaluate import evaluate, main, token_stats
from compressor.training.model_card import check_section, save_hub_folder
from compressor.utils import resolve_device
from compressor.tools.learned_baseline import LearnedCodec, train
from compressor.data.synthetic import driving_clip
from compressor.data.video import list_videos
from tests.conftest import tiny_model, video_codec, write_video


def test_token_stats():
    counts = torch.tensor([2.0, 2.0, 0.0, 0.0])
    assert token_stats(counts) == {"codebook_usage": 0.5, "token_entropy_bits": 1.0}


@pytest.mark.slow
def test_evaluate_on_generated_clips(video_dir):
    report = evaluate(tiny_model(), list_videos(video_dir)[:2], batch_size=5)
    assert report["overall"]["frames"] == 24 and report["overall"]["bytes_per_frame"] == 224
    assert [c["frames"] for c in report["clips"]] == [12, 12]


@pytest.fixture(scope="module")
def learned_codec(tmp_path_factory):
    """A compressai codec trained for 2 steps on frame shards in the compressor.tools.make_shards format."""
    d = tmp_path_factory.mktemp("learned")
    with wds.TarWriter(str(d / "train-clip-000.tar")) as sink:
        for i, f in enumerate(driving_clip(seed=1, num_frames=8, image_size=(128, 256))):
            sink.write({"__key__": f"{i:06d}", "frame.npy": f.numpy(), "meta.json": {"frame": i}})
    summary = train(str(d), str(d / "out"), minutes=5, steps=2, batch_size=2, N=16, M=16, num_workers=0)
    assert summary["steps"] == 2
    return str(d / "out" / "codec.pt")


@pytest.mark.slow
def test_learned_baseline_round_trip(learned_codec):
    codec = LearnedCodec.load(learned_codec)
    frames = driving_clip(seed=2, num_frames=3, image_size=(128, 256))
    strings = codec.compress(frames)
    assert len(strings) == 3 and all(isinstance(s, bytes) and len(s) > 0 for s in strings)
    recon = codec.decompress(strings, (128, 256))
    assert recon.shape == frames.shape and recon.dtype == torch.uint8
    assert torch.equal(codec.decompress(strings, (128, 256)), recon)  # decoding is deterministic


def test_learned_baseline_rejects_other_files(tmp_path):
    tiny_model().save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="bmshj2018-factorized"):
        LearnedCodec.load(str(tmp_path / "m.pt"))


@pytest.mark.slow
def test_evaluate_cli_compares_all_methods_at_the_budget(video_dir, tmp_path, learned_codec):
    model_path = tmp_path / "m.pt"
    tiny_model().save(model_path)
    out = tmp_path / "report"
    clips = list_videos(video_dir)[:2]
    run = subprocess.run([sys.executable, "-m", "compressor.tools.evaluate", "--checkpoint", str(model_path), "--input",
                          *clips, "--output", str(out), "--frame-stride", "6", "--codecs", "jpeg", "webp",
                          "--learned", learned_codec, "--gallery-frames", "1"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "LPIPS skipped" in run.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoints"]["ours: m"]["overall"]["frames"] == 24
    methods = report["comparison"]["methods"]
    assert set(methods) == {"ours: m", "jpeg (full size)", "jpeg (downscaled)", "webp (full size)",
                            "webp (downscaled)", "hevc (x265, inter)", "bmshj2018-factorized (compressai)"}
    for name, m in methods.items():
        assert m["overall"]["frames"] == 4  # frames 0 and 6 of two clips, the same for every method
        for clip in m["per_frame"].values():
            # per-frame records for both comparison frames of each clip
            assert len(clip["bytes"]) == 2
    webp = methods["webp (downscaled)"]
    assert webp["overall"]["fits"] == 1.0
    assert max(b for c in webp["per_frame"].values() for b in c["bytes"]) <= 224
    assert methods["jpeg (full size)"]["overall"]["fits"] == 0.0  # JPEG cannot get a 128x256 frame into 224 B
    assert methods["ours: m"]["overall"]["bytes_per_frame"] == 224
    assert report["comparison"]["rd"]["ours: m"] == [[224.0, pytest.approx(methods["ours: m"]["overall"]["psnr"])]]
    assert all(b <= 1280 for b, _ in report["comparison"]["rd"]["webp (downscaled)"])
    md = (out / "report.md").read_text()
    assert "| webp (downscaled) |" in md and "| clip |" in md
    for png in ("rd.png", "gallery.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(out / "gallery.png").size[1] >= 2 * (128 + 14)  # one row per clip (1 gallery frame each)


def test_gallery_picks_are_distinct_even_for_short_clips():
    from compressor.tools.evaluate import _spread

    for n in range(30):
        for k in range(8):
            picks = _spread(n, k)
            assert picks == sorted(set(picks)) and len(picks) == min(n, k) and all(0 <= i < n for i in picks)


def _checkpoints_only(tmp_path, device: str) -> dict:
    """evaluate's CLI on one 3-frame clip, our model only; returns report.json."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    clip = tmp_path / "clip.mp4"
    write_video(str(clip), driving_clip(seed=0, num_frames=3, image_size=(128, 256)))
    tiny_model().save(tmp_path / "m.pt")
    main(["--checkpoint", str(tmp_path / "m.pt"), "--input", str(clip), "--output", str(tmp_path / "out"),
          "--checkpoints-only", "--batch-size", "2", "--device", device])
    return json.loads((tmp_path / "out" / "report.json").read_text())


def test_report_records_the_device(tmp_path):
    report = _checkpoints_only(tmp_path, "cpu")
    assert report["device"] == "cpu" and "device_name" not in report
    assert report["checkpoints"]["ours: m"]["device"] == "cpu"
    assert report["checkpoints"]["ours: m"]["overall"]["frames"] == 3


def test_card_shows_the_last_evaluation_of_each_key(tmp_path):
    """--card: the Hub folder's card gets the every-frame numbers as its model-index and an Evaluation section,
    equal to report.json's; a second evaluation of the same clips replaces the first instead of adding to it, and
    one with --search-steps is kept beside it."""
    from huggingface_hub import ModelCard

    clip = tmp_path / "clip.mp4"
    write_video(str(clip), driving_clip(seed=0, num_frames=3, image_size=(128, 256)))
    # as the training export writes it: its few-frame check is a section of its own, not a second "Evaluation"
    check = check_section({"psnr": 20.0, "frames": 8, "bytes_per_frame": 224})
    save_hub_folder(tiny_model(), str(tmp_path / "hub"), {"Check at export": check})
    before = (tmp_path / "hub" / "README.md").read_text()
    for run, search in (("out1", []), ("out2", []), ("searched", ["--search-steps", "1"])):
        main(["--checkpoint", str(tmp_path / "hub"), "--input", str(clip), "--output", str(tmp_path / run),
              "--checkpoints-only", "--batch-size", "2", "--device", "cpu", "--card", *search])
    [report] = json.loads((tmp_path / "out2" / "report.json").read_text())["checkpoints"].values()
    [searched] = json.loads((tmp_path / "searched" / "report.json").read_text())["checkpoints"].values()
    overall = report["overall"]
    card = ModelCard.load(tmp_path / "hub" / "README.md")
    plain = "frame compression, 224 bytes per frame"
    results = {r.metric_name: r.metric_value for r in card.data.eval_results if r.task_name == plain}
    assert results == {"PSNR (dB), mean over clips": round(overall["psnr_clip_mean"], 2),
                       "PSNR (dB), mean over frames": round(overall["psnr"], 2),
                       "MS-SSIM": round(overall["ms_ssim"], 4), "bytes per frame": 224.0}
    assert {(r.dataset_name, r.dataset_split, r.task_name) for r in card.data.eval_results} == {
        ("clip.mp4", None, plain), ("clip.mp4", None, plain + ", tokens searched for 1 steps at encode time")}
    assert len(card.data.eval_results) == 2 * 4
    text = card.text
    assert text.count("## Evaluation\n") == 1 and f"| **all (frame-weighted)** | 3 | {overall['psnr']:.2f} |" in text
    assert text.count("### clip.mp4, all clips\n") == 1 and text.count("### clip.mp4, all clips, 1 search steps\n") == 1
    assert f"| **all (frame-weighted)** | 3 | {searched['overall']['psnr']:.2f} |" in text
    assert "Measured with `python -m compressor.tools.evaluate --checkpoint" in text and "--card" in text
    assert text.count("Measured with") == 2 and text.count("## Check at export\n") == 1
    assert text.startswith(before.split("---\n", 2)[2].rstrip())  # what save_pretrained wrote is kept, above it


def test_card_of_a_video_folder_records_its_mean_bytes(tmp_path):
    """--card on a video codec's Hub folder: whole clips in order, the budget its mean bytes per frame."""
    from huggingface_hub import ModelCard

    clip = tmp_path / "clip.mp4"
    write_video(str(clip), driving_clip(seed=0, num_frames=3, image_size=(128, 256)))
    video_codec(2, gop=4).save_pretrained(tmp_path / "hub")  # I 224 B, then P frames of 80 B
    main(["--checkpoint", str(tmp_path / "hub"), "--input", str(clip), "--output", str(tmp_path / "out"),
          "--checkpoints-only", "--device", "cpu", "--card"])
    [report] = json.loads((tmp_path / "out" / "report.json").read_text())["checkpoints"].values()
    assert report["mode"].startswith("video") and report["overall"]["bytes_per_frame"] == (224 + 2 * 80) / 3
    card = ModelCard.load(tmp_path / "hub" / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["bytes per frame"] == 128.0 and results["PSNR (dB), mean over frames"] == round(
        report["overall"]["psnr"], 2)
    assert "Mode: video" in card.text and card.text.count("## Evaluation") == 1


def test_card_needs_hub_folders(tmp_path, capsys):
    tiny_model().save(tmp_path / "m.pt")
    with pytest.raises(SystemExit) as e:  # refused before any video is decoded
        main(["--checkpoint", str(tmp_path / "m.pt"), "--input", "nowhere", "--card"])
    assert e.value.code == 2 and "--card writes into Hub folders" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_report_records_the_cuda_device_and_matches_the_cpu(tmp_path):
    report = _checkpoints_only(tmp_path, "cuda")
    assert report["device"] == "cuda" and report["device_name"] == torch.cuda.get_device_name()
    cpu = _checkpoints_only(tmp_path / "cpu", "cpu")["checkpoints"]["ours: m"]["overall"]
    # Kernels differ between devices, so a token may flip at a rounding boundary: close, not equal.
    assert report["checkpoints"]["ours: m"]["overall"]["psnr"] == pytest.approx(cpu["psnr"], abs=0.2)


def test_cuda_asked_for_without_cuda_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(SystemExit) as e:  # refused before any file is read
        main(["--checkpoint", "missing.pt", "--input", "nowhere", "--device", "cuda"])
    assert e.value.code == 2
    assert "--device cuda was asked for, but CUDA is not available" in capsys.readouterr().err


def test_search_gain_reports_plain_and_searched_encoding_on_the_same_frames(video_dir, tmp_path):
    from compressor.tools.search_gain import main as search_gain

    tiny_model().save(tmp_path / "m.pt")
    search_gain(["--checkpoint", str(tmp_path / "m.pt"), "--input", *list_videos(video_dir)[:2], "--steps", "3", "--lr", "0.3",
                 "--frame-stride", "4", "--output", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames"] == 6 and [r["steps"] for r in report["rows"]] == [0, 3]  # plain encode always measured
    plain, searched = report["rows"]
    assert plain["gain_db"] == 0 and searched["gain_db"] > 0 and searched["encode_fps"] > 0
    assert set(searched["clips"]) == {"clip0.mp4", "clip1.mp4"}
    assert "| 3 |" in (tmp_path / "out" / "report.md").read_text()
