"""One conversion of uint8 frames to the [-1, 1] floats models read and one back (``compressor.utils.to_unit`` /
``to_uint8``), used by the codecs and by training instead of inline arithmetic; the values are those the inline
formulas gave, bit for bit (issue 38)."""

from __future__ import annotations

import glob
import os
import re

import pytest
import torch

from compressor.utils import to_uint8, to_unit
from tests.conftest import conditional_codec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVERY_BYTE = torch.arange(256, dtype=torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_to_unit_is_the_inline_formula_bit_for_bit_and_to_uint8_inverts_it(dtype):
    unit = to_unit(EVERY_BYTE, dtype)
    assert unit.dtype == dtype and torch.equal(unit, EVERY_BYTE.to(dtype) / 127.5 - 1)
    assert unit.min() == -1 and unit.max() == 1
    if dtype == torch.float32:  # exact enough to come back: every byte does
        assert torch.equal(to_uint8(unit), EVERY_BYTE)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8) * 1.5  # beyond [-1, 1] too: clamped
    assert torch.equal(to_uint8(x), ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_conditional_codec_encodes_as_with_its_inline_conversion(dtype):
    torch.manual_seed(0)
    codec = conditional_codec().eval()
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    ref = (torch.rand(2, 3, 128, 256) * 2 - 1).to(dtype)  # a reference in the dtype the codec runs in
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        before = codec.encode_to_codes(frames.to(ref.dtype) / 127.5 - 1, ref)["tokens"]  # the formula it replaced
        assert torch.equal(codec.encode(frames, ref), before)


def test_no_inline_conversion_of_frames_is_left_in_the_codecs_or_training():
    inline = re.compile(r"/ 127\.5 - 1|\* 127\.5\)\.round")
    found = [f"{os.path.relpath(p, REPO)}:{n}" for part in ("codec", "training")
             for p in sorted(glob.glob(os.path.join(REPO, "compressor", part, "*.py")))
             for n, line in enumerate(open(p), 1) if inline.search(line)]
    assert not found, found
