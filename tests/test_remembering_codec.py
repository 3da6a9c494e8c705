"""The decoder that remembers as a codec like every other (issue 38): ``compressor.load`` returns a
``RememberingCodec`` (the per-frame model's tokens, decoded with the frames before them) that answers the clip API,
and training exports it through the one export helper: ``remembering.pt`` plus a Hub folder, each loaded back and
checked to decode the check frames as the model in memory does."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.codec.clips import clip_codec, clip_tokens
from compressor.codec.remember import RememberingCodec, RememberingDecoder, load_remembering
from compressor.data.synthetic import driving_clip
from compressor.training.core import export
from tests.conftest import tiny_model


def remembering_codec(seed: int = 0) -> RememberingCodec:
    """A tiny per-frame model and a decoder that reads 2 earlier frames, its projections made to matter (they start
    at zero, which decodes exactly as the per-frame decoder)."""
    intra = tiny_model()
    decoder = RememberingDecoder(intra, history=2)
    torch.manual_seed(seed)
    with torch.no_grad():
        for proj in decoder.past:
            proj.weight.normal_(std=0.2)
    return RememberingCodec(intra, decoder.eval()).eval()


def test_a_remembering_decoder_is_a_clip_codec_of_per_frame_tokens():
    codec, frames = remembering_codec(), driving_clip(seed=8, num_frames=4)
    assert clip_codec(codec) is codec and codec.gop == 1 and not codec.supports_search
    tokens, recon = codec.encode_clip(frames)
    assert torch.equal(torch.stack(tokens), codec.intra.encode(frames))  # the per-frame tokens, as they are
    assert torch.equal(torch.stack(clip_tokens(codec, frames)), torch.stack(tokens))
    assert torch.equal(codec.decode_clip(tokens), recon)
    assert torch.equal(recon, codec.decoder.decode_clip(torch.stack(tokens)))
    alone = codec.intra.decode(torch.stack(tokens))
    # the first frame has no earlier frame and decodes as alone; the others read theirs
    assert torch.equal(recon[0], alone[0]) and not torch.equal(recon[1:], alone[1:])
    assert codec.frame_formats() == clip_codec(codec.intra).frame_formats() and codec.bytes_per_frame == 224


def test_the_remembering_decoder_exports_through_the_one_helper(tmp_path):
    codec, frames = remembering_codec(), driving_clip(seed=9, num_frames=5)
    done = export(codec, str(tmp_path / "run"), "remembering.pt", {"Training": "none"}, frames)
    assert done["hub"] and done["frames"] == 5 and done["bytes_per_frame"] == codec.bytes_per_frame
    assert "PSNR" in (tmp_path / "run" / "hub" / "README.md").read_text()
    tokens = codec.intra.encode(frames)
    for written in (done["path"], done["hub"]):
        loaded = compressor.load(written)
        assert isinstance(loaded, RememberingCodec) and loaded.history == 2
        assert torch.equal(loaded.decode_clip(tokens), codec.decode_clip(tokens)), written
    intra, decoder = load_remembering(done["path"])  # the file's format is the one remembering.pt always had
    assert torch.equal(decoder.decode_clip(tokens), codec.decode_clip(tokens))

    broken = remembering_codec()
    other = remembering_codec(seed=1)  # what a broken save would write: other weights
    broken.save = other.save
    with pytest.raises(RuntimeError, match="does not decode the check frames"):
        export(broken, str(tmp_path / "broken"), "remembering.pt", {}, frames)
