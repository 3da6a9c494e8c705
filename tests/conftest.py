import os

import av
import numpy as np
import pytest
import torch

from compressor.codec.autoencoder import Autoencoder
from compressor.codec.decoders import (ConditionalViTDecoder, ConditionalViTOverlapDecoder, ConvDecoder,
                                      ConvUpsampleDecoder, ViTDecoder, ViTOverlapDecoder, ViTRefineDecoder)
from compressor.codec.encoders import ConvEncoder, ConvStemEncoder, ViTEncoder
from compressor.codec.quantizers import FSQ, VQ, StandardizedFSQ, WhitenedFSQ
from compressor.codec.video import ConditionalCodec, VideoCodec
from compressor.data.synthetic import driving_clip
from compressor.data.video import DEFAULT_DASHCAM_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(2)

# Tiny variants of every design (pure ViT, ViT + refine head, conv stem, pure conv): the contracts do not depend
# on width, and CI has 2 cores.
ENCODERS = {
    "vit": lambda: ViTEncoder(patch_size=16, dim=32, depth=1, heads=2),
    "convstem": lambda: ConvStemEncoder(stem_channels=[8, 8, 16, 16], dim=32, depth=1, heads=2),
    "vit-refine": lambda: ViTEncoder(patch_size=16, dim=32, depth=1, heads=2),
    "conv": lambda: ConvEncoder(channels=[8, 8, 16, 32], depth=1),
    "vit-overlap": lambda: ViTEncoder(patch_size=16, dim=32, depth=1, heads=2),
}
DECODERS = {
    "vit": lambda: ViTDecoder(patch_size=16, dim=48, depth=1, heads=2),
    "convstem": lambda: ConvUpsampleDecoder(dim=48, depth=1, heads=2, head_channels=[16, 16, 8, 8]),
    "vit-refine": lambda: ViTRefineDecoder(patch_size=16, dim=48, depth=1, heads=2, features=5, hidden=8),
    "conv": lambda: ConvDecoder(dim=48, depth=1, head_channels=[16, 16, 8, 8]),
    "vit-overlap": lambda: ViTOverlapDecoder(patch_size=16, dim=48, depth=1, heads=2),
}
QUANTIZERS = {
    "fsq": lambda: FSQ([8, 8, 8, 6, 5]),
    "fsq-std": lambda: StandardizedFSQ([8, 8, 8, 6, 5]),
    "fsq-white": lambda: WhitenedFSQ([8, 8, 8, 6, 5]),
    "vq": lambda: VQ(codebook_size=16384, dim=8),
}


class Killed(BaseException):
    """Stands in for kill -9: nothing in the pipeline catches a BaseException, so no cleanup code runs."""


def tiny_model(design: str = "vit", quantizer: str = "fsq", **kwargs) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(ENCODERS[design](), QUANTIZERS[quantizer](), DECODERS[design](), **kwargs).eval()


def assert_round_trip(model: Autoencoder, folder, part: str) -> None:
    """``model`` (its running statistics moved by a training pass) saved as ``model.pt`` and as a Hub folder under
    ``folder``: each copy, loaded back, rebuilds ``part`` ("encoder" or "decoder") from the same arguments and encodes
    and decodes exactly as the model in memory does."""
    from compressor.codec.autoencoder import load

    model.train()(torch.rand(4, 3, *model.image_size) * 2 - 1)  # moves the quantizer's (and norms') statistics
    model.eval()
    frames = torch.randint(0, 256, (3, 3, *model.image_size), dtype=torch.uint8)
    model.save(folder / "model.pt")
    model.save_pretrained(folder / "hub")
    tokens = model.encode(frames)
    for loaded in (load(folder / "model.pt"), load(folder / "hub")):
        mine, theirs = getattr(model, part), getattr(loaded, part)
        assert type(theirs) is type(mine) and theirs.init_args == mine.init_args
        assert torch.equal(loaded.encode(frames), tokens)
        assert torch.equal(loaded.decode(tokens), model.decode(tokens))


def conditional_codec(merge: int = 1, decoder: str = "vit", quantizer: torch.nn.Module | None = None,
                      enc_dim: int = 32, dec_dim: int = 32, motion: bool = False) -> ConditionalCodec:
    """A tiny conditional codec composed as a video config composes it: a 6-channel ViT encoder, a quantizer and the
    conditional decoder of the pixel head ``decoder`` ("vit": a patch per token, "vit-overlap": overlapping tiles)."""
    heads = {"vit": ConditionalViTDecoder, "vit-overlap": ConditionalViTOverlapDecoder}[decoder]
    return ConditionalCodec(ViTEncoder(patch_size=16, dim=enc_dim, depth=1, heads=2, in_channels=6),
                            quantizer or FSQ([8, 5, 5, 5]), heads(patch_size=16, dim=dec_dim, depth=1, heads=2,
                                                                  motion=motion), merge=merge)


def video_codec(merge: int = 1, gop: int = 4, trained: bool = True) -> VideoCodec:
    """A tiny video codec on ``tiny_model()``: conditional frames of 128 / merge tokens from a 1000-code FSQ."""
    torch.manual_seed(0)
    inter = conditional_codec(merge)
    if trained:  # a fresh model mostly keeps its reference; random weights make every conditional frame matter
        for layer in (inter.decoder.head, inter.decoder.blend, inter.decoder.ref_embed):
            torch.nn.init.normal_(layer.weight, std=0.02)
    return VideoCodec(tiny_model(), inter.eval(), gop).eval()


def write_video(path: str, frames: torch.Tensor, fps: int = 10, codec: str = "libx264") -> None:
    """uint8 (T, 3, H, W) -> a video file written with PyAV."""
    T, _, H, W = frames.shape
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = W, H
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f.permute(1, 2, 0).numpy()), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> str:
    """Five short generated driving clips at a non-2:1 size (so preprocessing must crop)."""
    d = tmp_path_factory.mktemp("videos")
    for i in range(5):
        write_video(str(d / f"clip{i}.mp4"), driving_clip(seed=i, num_frames=12, image_size=(180, 320)))
    return str(d)


@pytest.fixture(scope="session")
def dashcam_dir() -> str:
    path = os.environ.get("COMPRESSOR_DASHCAM_DIR", DEFAULT_DASHCAM_DIR)
    if not os.path.isdir(path):
        pytest.skip(f"real dashcam clips not found at {path} (set COMPRESSOR_DASHCAM_DIR)")
    return path
