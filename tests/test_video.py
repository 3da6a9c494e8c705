import os

import av
import numpy as np
import pytest
import torch
from PIL import Image

from compressor import preprocess
from compressor.data.video import iter_frames, list_videos, read_frames, read_manifest, split_videos
from tests.conftest import tiny_model, write_video


def test_preprocess_crops_to_aspect_then_resizes():
    # A 720x1280 frame: 2:1 needs a 640-row centre window, so the top and bottom 40 rows (red) are cropped away.
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:40], frame[-40:] = [255, 0, 0], [255, 0, 0]
    frame[40:-40, :640] = [0, 0, 200]
    out = preprocess(frame)
    assert out.shape == (3, 128, 256) and out.dtype == torch.uint8
    assert out[0].max() == 0  # no red survived the crop
    assert (out[2, :, :128] == 200).all() and (out[2, :, 128:] == 0).all()  # area resize keeps the edge sharp


def test_preprocess_is_an_area_average():
    frame = np.zeros((256, 512, 3), np.uint8)
    frame[::2] = 200  # alternating rows average to 100 under a 2x area resize
    assert (preprocess(frame) == 100).all()


def test_preprocess_crops_tall_frames_horizontally():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :160] = 255  # a 640x320 window is taken from the centre rows, all columns kept
    out = preprocess(frame)
    assert out.shape == (3, 128, 256) and (out[:, :, :64] == 255).all() and (out[:, :, 64:] == 0).all()


def test_preprocess_accepts_every_frame_type_identically():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)
    ref = preprocess(arr)
    assert torch.equal(preprocess(torch.from_numpy(arr)), ref)
    assert torch.equal(preprocess(Image.fromarray(arr)), ref)
    assert torch.equal(preprocess(av.VideoFrame.from_ndarray(arr, format="rgb24")), ref)
    assert preprocess(arr, image_size=(64, 64)).shape == (3, 64, 64)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((10, 10, 4), np.uint8)])
def test_preprocess_rejects_bad_frames(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(bad)


@pytest.mark.parametrize("codec,ext", [("libx264", "mp4"), ("mpeg4", "avi"),
                                       pytest.param("libx265", "mkv", marks=pytest.mark.slow), ("gif", "gif")])
def test_reads_generated_video(tmp_path, codec, ext):
    frames = torch.zeros(6, 3, 128, 256, dtype=torch.uint8)
    frames[:, 1] = torch.arange(6).view(6, 1, 1) * 40  # a green ramp over time
    path = str(tmp_path / f"v.{ext}")
    write_video(path, frames, codec=codec)
    got = read_frames(path)
    assert got.shape == (6, 3, 128, 256)
    green = got[:, 1].float().mean(dim=(1, 2))
    assert torch.allclose(green, frames[:, 1].float().mean(dim=(1, 2)), atol=12)  # lossy codecs, same content


def test_damaged_video_raises(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video")
    with pytest.raises(av.error.FFmpegError):
        list(iter_frames(str(path)))


def test_list_videos_dir_glob_and_missing(video_dir):
    paths = list_videos(video_dir)
    assert len(paths) == 5 and all(p.endswith(".mp4") for p in paths)
    assert list_videos(os.path.join(video_dir, "clip[01].mp4")) == paths[:2]
    with pytest.raises(FileNotFoundError):
        list_videos(os.path.join(video_dir, "nope.mp4"))


def test_split_is_by_whole_video_and_disjoint(video_dir):
    paths = list_videos(video_dir)
    train, val = split_videos(paths, val_fraction=0.4)
    assert val and train and not set(train) & set(val)
    assert sorted(train + val) == paths
    assert split_videos(paths, val_fraction=0.4) == (train, val)  # stable


def test_manifest_decides_the_split(tmp_path, video_dir):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        os.symlink(os.path.join(video_dir, "clip0.mp4"), tmp_path / name)
    (tmp_path / "MANIFEST.tsv").write_text("file\tsplit\na.mp4\ttrain\nb.mp4\tval\nc.mp4\ttrain\n")
    train, val = split_videos(list_videos(str(tmp_path)))
    assert [os.path.basename(p) for p in val] == ["b.mp4"]
    assert [os.path.basename(p) for p in train] == ["a.mp4", "c.mp4"]
    # a training-only collection (../shared/dashcam-extra): no video is moved to val behind the manifest's back
    (tmp_path / "MANIFEST.tsv").write_text("file\tsplit\na.mp4\ttrain\nb.mp4\ttrain\nc.mp4\ttrain\n")
    assert split_videos(list_videos(str(tmp_path))) == (sorted(str(p) for p in tmp_path.glob("*.mp4")), [])


# ---- real dashcam clips -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_clips_decode_and_follow_the_manifest(dashcam_dir):
    manifest = read_manifest(dashcam_dir)
    paths = list_videos(dashcam_dir)
    assert {os.path.basename(p) for p in paths} == set(manifest)
    train, val = split_videos(paths)
    assert {os.path.basename(p) for p in val} == {f for f, s in manifest.items() if s == "val"}
    assert not set(train) & set(val)
    for path in paths:
        frame = next(iter_frames(path))
        assert preprocess(frame).shape == (3, 128, 256)


@pytest.mark.slow
def test_codec_api_on_a_real_clip(dashcam_dir):
    import compressor

    val = [p for p in list_videos(dashcam_dir) if read_manifest(dashcam_dir)[os.path.basename(p)] == "val"]
    frames = read_frames(val[0], stride=25)
    model = tiny_model()
    tokens = model.encode(frames)
    data = compressor.pack(tokens)
    assert len(data) == 224 * len(frames)
    recon = model.decode(compressor.unpack(data, len(frames)))
    assert recon.shape == frames.shape and recon.dtype == torch.uint8
