"""The dataset card (README.md) of an encoded folder: what it says, that its three reader snippets run and read the
same tokens, and that a resumed encode rewrites it exactly as an uninterrupted one writes it."""

import importlib.util
import os
import re
import shutil

import numpy as np
import pytest

from compressor.latents import read_segments
from compressor.latents.card import write_card
from compressor.codec.checkpoint import model_id
from compressor.latents.manifest import write_merged_manifest
from compressor.latents.pipeline import encode_videos
from compressor.data.synthetic import driving_clip
from tests.conftest import Killed, tiny_model, write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> str:
    """Three 10 fps clips (6 frames: two 0.5 s segments each) and a file that is not a video."""
    d = tmp_path_factory.mktemp("card-videos")
    for i in range(3):
        write_video(str(d / f"v{i}.mp4"), driving_clip(40 + i, 6, image_size=(180, 320)))
    (d / "broken.mp4").write_text("not a video")
    return str(d)


def encode(inputs: str, output, **kwargs) -> str:
    """What encode.py does, in this process: encode, merge the manifests, write the card; returns the card."""
    model = tiny_model()
    encode_videos(model, [inputs], str(output), segment_seconds=0.5, batch_size=8, num_workers=0, progress=False,
                  maxcount=1, **kwargs)
    write_card(str(output), model, write_merged_manifest(str(output), [inputs]), segment_seconds=0.5)
    return (output / "README.md").read_text()


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_the_card_describes_the_folder_and_its_three_readers_read_the_same_tokens(tmp_path, videos, monkeypatch):
    card = encode(videos, tmp_path / "out")
    assert "# Token latents of 4 videos" in card
    assert "| videos | 4: 1 failed, 3 ok |" in card and "| frames | 18 |" in card
    assert "| segments (samples) | 6 in 3 shards" in card and "failed: `broken.mp4`" in card
    assert "| source frame rates | 10 fps |" in card and "| token frame rates | 10 fps (every decoded frame) |" in card
    assert "320x180 (3 videos)" in card and "at most 0.5 s" in card
    assert f"Model id `{model_id(tiny_model())}`" in card and '"class_path": "compressor.codec.quantizers.FSQ"' in card
    assert "grid of 8x16" in card and "15360 codes: 14 bits per token, 224 bytes per frame" in card
    expected = {}
    for shard in sorted((tmp_path / "out").glob("*.tar")):
        for seg in read_segments(str(shard)):
            expected[(seg["meta"]["source"], seg["meta"]["segment"])] = seg["tokens"].numpy()
    assert len(expected) == 6
    # Hugging Face datasets: its cache in this test's folder, and no network.
    for var, value in {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(var, value)
    blocks = python_blocks(card)
    assert [("LatentDataset" in b, "wds.WebDataset" in b, "load_dataset" in b) for b in blocks] == [
        (True, False, False), (False, True, False), (False, False, True)]
    for block in blocks:  # each snippet runs as written and leaves {(source, segment): tokens (T, N)}
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        got = namespace["segments"]
        assert got.keys() == expected.keys(), block
        assert all(np.array_equal(got[k].astype(np.int64), v) for k, v in expected.items()), block


def test_a_resumed_encode_rewrites_the_card_as_a_clean_run_writes_it(tmp_path, videos):
    clean = encode(videos, tmp_path / "clean")
    # A finished run over two of the videos leaves a card for two; a third video arrives, the next run is killed
    # after its first shard, and the run after that finishes.
    inputs = tmp_path / "videos"
    os.makedirs(inputs)
    for name in ("v0.mp4", "broken.mp4"):
        shutil.copy(os.path.join(videos, name), inputs)
    assert "# Token latents of 2 videos" in encode(str(inputs), tmp_path / "out")
    for name in ("v1.mp4", "v2.mp4"):
        shutil.copy(os.path.join(videos, name), inputs)

    def kill(step: str) -> None:
        if step == "shard_renamed":
            raise Killed

    with pytest.raises(Killed):
        encode(str(inputs), tmp_path / "out", step_hook=kill)
    assert "# Token latents of 2 videos" in (tmp_path / "out" / "README.md").read_text()  # the last finished run's
    resumed = encode(str(inputs), tmp_path / "out")
    assert resumed.replace(str(tmp_path / "out"), "OUT").replace(str(inputs), "IN") == \
        clean.replace(str(tmp_path / "clean"), "OUT").replace(videos, "IN")
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


@pytest.mark.slow
def test_encode_py_writes_the_card(tmp_path, videos):
    model = tiny_model()
    model.save(tmp_path / "model.pt")
    spec = importlib.util.spec_from_file_location("encode_script", os.path.join(REPO, "encode.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--checkpoint", str(tmp_path / "model.pt"), "--input", videos, "--output",
                        str(tmp_path / "out"), "--workers", "0", "--segment-seconds", "0.5"]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"Model id `{model_id(model)}`" in card and "| videos | 4: 1 failed, 3 ok |" in card
