"""The Hugging Face Hub folder: save_pretrained -> compressor.load / from_pretrained, offline, and the training export;
per-frame models and video codecs."""

import json
import shutil

import pytest
import torch

import compressor
from compressor.codec.autoencoder import Autoencoder
from compressor.codec.video import VideoCodec
from compressor.data.synthetic import driving_clip
from tests.conftest import ENCODERS, QUANTIZERS, tiny_model, video_codec

FRAMES = driving_clip(seed=3, num_frames=4, image_size=(128, 256))


def _trained_buffers(model: Autoencoder) -> Autoencoder:
    """Move every buffer away from its initial value (BatchNorm running stats, VQ usage) with a few training
    forwards, so a folder that dropped or re-initialised buffers gives different tokens."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(driving_clip(seed=seed, num_frames=4, image_size=(128, 256)).float() / 127.5 - 1)
    return model.eval()


@pytest.mark.parametrize("design", list(ENCODERS))
@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_folder_gives_the_tokens_of_the_pt_export(tmp_path, design, quantizer):
    model = _trained_buffers(tiny_model(design, quantizer))
    model.save(tmp_path / "model.pt")
    model.save_pretrained(tmp_path / "hub")
    assert {p.name for p in (tmp_path / "hub").iterdir()} == {"config.json", "model.safetensors", "README.md"}

    expected = compressor.load(tmp_path / "model.pt").encode(FRAMES)
    for loaded in (compressor.load(tmp_path / "hub"), Autoencoder.from_pretrained(tmp_path / "hub")):
        assert torch.equal(loaded.encode(FRAMES), expected)
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
        assert not loaded.training


def test_standardized_fsq_running_stats_round_trip(tmp_path):
    model = _trained_buffers(tiny_model("vit", "fsq-std"))
    norm = model.quantizer.norm
    assert not torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))  # the stats did move
    model.save_pretrained(tmp_path)
    loaded = compressor.load(tmp_path)
    assert torch.equal(loaded.quantizer.norm.running_mean, norm.running_mean)
    assert torch.equal(loaded.quantizer.norm.running_var, norm.running_var)
    assert torch.equal(loaded.encode(FRAMES), model.encode(FRAMES))


def test_config_names_the_parts_and_overrides_apply(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format"] == "compressor/1" and config["image_size"] == [128, 256]
    assert config["encoder"]["class_path"] == "compressor.codec.encoders.ViTEncoder"
    big = compressor.load(tmp_path, image_size=(256, 512), max_bytes_per_frame=896)  # same weights, larger grid
    assert big.num_tokens == 512 and big.bytes_per_frame == 896


def test_card_states_the_budget(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: compressor" in card
    assert "| 128 | 8 x 16 | 14 | 224 | 15360 | 224 B |" in card
    assert "compressor.codec.encoders.ViTEncoder" in card


@pytest.mark.parametrize("class_path", ["os.system", "torch.nn.Identity"])
def test_folder_naming_a_foreign_class_is_refused(tmp_path, class_path):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["encoder"] = {"class_path": class_path, "init_args": {"command": f"touch {tmp_path / 'pwned'}"}}
    if class_path == "torch.nn.Identity":  # a module class, but not ours: refused by module, not by type
        config["encoder"]["init_args"] = {}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for loader in (compressor.load, Autoencoder.from_pretrained):
        with pytest.raises(ValueError, match=f"refusing to build '{class_path}'"):
            loader(tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["no config", "other format", "no weights", "bad weights", "wrong shapes"])
def test_damaged_folder_is_not_a_checkpoint(tmp_path, damage):
    tiny_model().save_pretrained(tmp_path)
    if damage == "no config":
        (tmp_path / "config.json").unlink()
    elif damage == "other format":
        (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    elif damage == "no weights":
        (tmp_path / "model.safetensors").unlink()
    elif damage == "bad weights":
        (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    else:  # a config asking for a wider encoder than the weights in the folder
        config = json.loads((tmp_path / "config.json").read_text())
        config["encoder"]["init_args"]["dim"] = 64
        (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a compressor"):
        compressor.load(tmp_path)


def test_save_pretrained_refuses_a_foreign_config(tmp_path):
    with pytest.raises(ValueError, match="derived from its parts"):
        tiny_model().save_pretrained(tmp_path, config={"image_size": [1, 1]})


def test_training_exports_a_hub_folder_with_a_card(tmp_path, capsys):
    from tests.test_train import TINY, run_cli

    run_cli(["fit", *TINY, "--trainer.fast_dev_run", "2", "--trainer.default_root_dir", str(tmp_path)])
    hub = tmp_path / "hub"
    assert {p.name for p in hub.iterdir()} == {"config.json", "model.safetensors", "README.md", "recon.png"}
    pt, folder = compressor.load(tmp_path / "model.pt"), compressor.load(hub)
    assert torch.equal(folder.encode(FRAMES), pt.encode(FRAMES))
    card = (hub / "README.md").read_text()
    assert "224 bytes/frame" in card and "PSNR" in card and "validation frames" in card
    assert "procedural driving-like scenes" in card and "Steps: 2" in card and "![" in card and "(recon.png)" in card
    assert (hub / "recon.png").read_bytes() == (tmp_path / "recon.png").read_bytes()
    assert not (tmp_path / "hub.tmp").exists() and "saved" in capsys.readouterr().out


# ---- the video codec's folder -----------------------------------------------------------------------------------
CLIP = driving_clip(seed=3, num_frames=6, image_size=(128, 256))  # groups of 4: I P P P I P


@pytest.mark.parametrize("merge", [1, 2])
def test_video_folder_decodes_a_clip_to_the_same_frames(tmp_path, merge):
    codec = video_codec(merge, gop=4)
    codec.save_pretrained(tmp_path / "hub")
    assert {p.name for p in (tmp_path / "hub").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["format"] == "compressor-video/1" and config["gop"] == 4
    assert config["inter"]["merge"] == merge and config["intra"] == codec.intra.export_config()
    assert config["inter"]["decoder"]["class_path"] == "compressor.codec.decoders.ConditionalViTDecoder"

    tokens, recon = codec.encode_clip(CLIP)
    for loaded in (compressor.load(tmp_path / "hub"), VideoCodec.from_pretrained(tmp_path / "hub")):
        assert isinstance(loaded, VideoCodec) and not loaded.training and loaded.gop == 4
        assert torch.equal(loaded.decode_clip(tokens), recon)  # a decoder with the folder only
        again, _ = loaded.encode_clip(CLIP)
        assert [t.tolist() for t in again] == [t.tolist() for t in tokens]
        assert loaded.state_dict().keys() == codec.state_dict().keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in codec.state_dict().items())
    assert VideoCodec.from_pretrained(tmp_path / "hub", gop=2).gop == 2  # as load_video(path, gop=2)
    with pytest.raises(ValueError, match="per-frame models only"):
        compressor.load(tmp_path / "hub", image_size=(256, 512))


def test_video_card_states_the_mode_the_group_and_each_frame_types_budget(tmp_path):
    codec = video_codec(2, gop=4)
    codec.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: compressor" in card and "video-compression" in card
    assert "Mode: video, in groups of 4 frames (gop 4)" in card and "Mode: per-frame" not in card.split("(A ")[0]
    I, P = codec.frame_formats()["I"], codec.frame_formats()["P"]
    assert (f"| I (intra) | 1 | {I['num_tokens']} | {I['token_layout']} | {I['bits_per_token']} | "
            f"{I['bytes_per_frame']} | {I['codebook_size']} |") in card
    assert (f"| P (conditional) | 3 | {P['num_tokens']} | {P['token_layout']} | {P['bits_per_token']} | "
            f"{P['bytes_per_frame']} | {P['codebook_size']} |") in card
    assert "| P (conditional) | 3 | 64 | 8x8 row-major, a token per 2 adjacent cells across | 10 | 80 | 1000 |" in card
    assert "compressor.codec.encoders.ViTEncoder" in card and "compressor.codec.decoders.ConditionalViTDecoder" in card
    assert "compressor.load(" in card and "encode_clip(frames)" in card and "decode_clip(tokens)" in card
    tiny_model().save_pretrained(tmp_path / "frame")
    assert "Mode: per-frame." in (tmp_path / "frame" / "README.md").read_text()


def test_each_folder_loads_as_its_own_mode(tmp_path):
    tiny_model().save_pretrained(tmp_path / "frame")
    video_codec().save_pretrained(tmp_path / "video")
    assert type(compressor.load(tmp_path / "frame")) is Autoencoder
    assert type(compressor.load(tmp_path / "video")) is VideoCodec
    with pytest.raises(ValueError, match="of format 'compressor-video/1'.*compressor.load reads every"):
        Autoencoder.from_pretrained(tmp_path / "video")
    with pytest.raises(ValueError, match="of format 'compressor/1'.*compressor.load reads every"):
        VideoCodec.from_pretrained(tmp_path / "frame")


@pytest.mark.parametrize("model", ["frame", "video"])
@pytest.mark.parametrize("how", ["push_to_hub", "save_pretrained(push_to_hub=True)"])
def test_push_to_hub_uploads_a_folder_that_loads(tmp_path, monkeypatch, model, how):
    """No network: the Hub client is replaced by one that keeps what would be uploaded."""
    import huggingface_hub.hub_mixin

    uploaded = tmp_path / "uploaded"

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, uploaded)
            return f"https://huggingface.co/{repo_id}"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    codec = tiny_model() if model == "frame" else video_codec()
    if how == "push_to_hub":
        codec.push_to_hub("user/repo")
    else:
        codec.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="user/repo")
    loaded = compressor.load(uploaded)
    assert type(loaded) is type(codec) and (uploaded / "README.md").exists()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in codec.state_dict().items())


# ---- write_evaluation: one evaluation per (dataset, split, search steps) ----------------------------------------
def _evaluate_into(folder, dataset: str, search_steps: int, psnr: float) -> None:
    """What ``evaluate --card`` writes for one run on the val clips of ``dataset``: a section naming the run and
    card_results of made-up numbers."""
    from compressor.codec.hub import write_evaluation
    from compressor.tools.eval_report import card_results

    overall = {"psnr_clip_mean": psnr, "psnr": psnr, "ms_ssim": 0.5, "bytes_per_frame": 224}
    markdown = (f"Measured on {dataset}, {search_steps} steps.\n\n"
                f"## {dataset}, val clips, every frame\n\n| psnr {psnr} |")
    write_evaluation(folder, "m", markdown, card_results(overall, dataset, "val", 224, search_steps),
                     dataset, "val", search_steps)


def _psnr_by_result(card) -> dict:
    """(dataset, split, task name) -> the PSNR mean over frames, of every evaluation in the card's model-index."""
    return {(r.dataset_name, r.dataset_split, r.task_name): r.metric_value for r in card.data.eval_results
            if r.metric_name == "PSNR (dB), mean over frames"}


PLAIN, SEARCHED = "frame compression, 224 bytes per frame", \
    "frame compression, 224 bytes per frame, tokens searched for 20 steps at encode time"
HEADINGS = ["### dashcam, val clips\n", "### dashcam, val clips, 20 search steps\n", "### extra, val clips\n",
            "### extra, val clips, 20 search steps\n"]


def test_card_keeps_an_evaluation_per_dataset_split_and_search(tmp_path):
    """Two val sets, each plain and searched: four sections in key order and four model-index groups; evaluating
    one key again replaces its section and numbers only."""
    from huggingface_hub import ModelCard

    (tmp_path / "README.md").write_text("---\nlibrary_name: compressor\n---\n\n# the model\n")
    for dataset, steps in [("extra", 20), ("dashcam", 0), ("extra", 0), ("dashcam", 20)]:
        _evaluate_into(tmp_path, dataset, steps, psnr=20.0 + steps)
    _evaluate_into(tmp_path, "dashcam", 0, psnr=25.0)  # the same key again: replaces
    card = ModelCard.load(tmp_path / "README.md")
    assert _psnr_by_result(card) == {("dashcam", "val", PLAIN): 25.0, ("dashcam", "val", SEARCHED): 40.0,
                                     ("extra", "val", PLAIN): 20.0, ("extra", "val", SEARCHED): 40.0}
    assert len(card.data.eval_results) == 4 * 4  # four metrics each, none left over from the replaced run
    text = card.text
    assert text.startswith("\n# the model") and text.count("## Evaluation\n") == 1
    assert [text.count(h) for h in HEADINGS] == [1, 1, 1, 1]
    assert [text.index(h) for h in HEADINGS] == sorted(text.index(h) for h in HEADINGS)  # sorted by key
    assert "| psnr 25.0 |" in text and "| psnr 20.0 |" in text and text.count("Measured on dashcam, 0 steps") == 1
    assert "\n#### dashcam, val clips, every frame\n" in text  # the evaluation's own headings sit under its key's


def _old_card(folder, command: str) -> None:
    """A card as write_evaluation wrote it when a card held one evaluation: a single unkeyed section."""
    from huggingface_hub import ModelCard, ModelCardData
    from compressor.codec.hub import EVALUATION_BEGIN, EVALUATION_END
    from compressor.tools.eval_report import card_results

    overall = {"psnr_clip_mean": 18.0, "psnr": 18.0, "ms_ssim": 0.5, "bytes_per_frame": 224}
    data = ModelCardData(model_name="m", eval_results=card_results(overall, "dashcam", "val", 224))
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n# the model\n\n{EVALUATION_BEGIN}\n## Evaluation\n\nMeasured with "
              f"`{command}`.\n\n### dashcam, val clips, every frame\n\n| psnr 18.0 |\n{EVALUATION_END}\n"
              ).save(folder / "README.md")


@pytest.mark.parametrize("searched", [False, True])
def test_card_of_the_single_evaluation_layout_is_read(tmp_path, searched):
    """An older card's one evaluation is kept under the key its model-index names, or, run with search (which its
    task name did not say), dropped with its numbers; either way it is not duplicated."""
    from huggingface_hub import ModelCard

    _old_card(tmp_path, "python -m compressor.tools.evaluate --split val" + (" --search-steps 20" if searched else ""))
    _evaluate_into(tmp_path, "extra", 0, psnr=21.0)
    text = ModelCard.load(tmp_path / "README.md").text
    if searched:
        assert "| psnr 18.0 |" not in text and _psnr_by_result(ModelCard.load(tmp_path / "README.md")) == {
            ("extra", "val", PLAIN): 21.0}
    else:
        assert text.count("| psnr 18.0 |") == 1 and text.index(HEADINGS[0]) < text.index("| psnr 18.0 |")
        assert "\n#### dashcam, val clips, every frame\n" in text and text.index(HEADINGS[0]) < text.index(HEADINGS[2])
    _evaluate_into(tmp_path, "dashcam", 0, psnr=22.0)  # the old evaluation's key: replaces it
    card = ModelCard.load(tmp_path / "README.md")
    assert _psnr_by_result(card) == {("dashcam", "val", PLAIN): 22.0, ("extra", "val", PLAIN): 21.0}
    assert "| psnr 18.0 |" not in card.text and card.text.count(HEADINGS[0]) == 1
    assert card.text.count("## Evaluation\n") == 1 and card.text.count("Measured") == 2
