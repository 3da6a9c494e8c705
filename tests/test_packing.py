import pytest
import torch

from compressor import pack, unpack


def test_default_budget_is_224_bytes_per_frame_and_exact():
    torch.manual_seed(0)
    tokens = torch.randint(0, 2**14, (5, 128))
    data = pack(tokens)
    assert len(data) == 5 * 224
    assert torch.equal(unpack(data, num_frames=5), tokens)


@pytest.mark.parametrize("num_tokens,bits", [(128, 10), (127, 13), (512, 14), (3, 1)])
def test_pack_size_is_ceil_of_bits(num_tokens, bits):
    tokens = torch.randint(0, 2**bits, (3, num_tokens))
    data = pack(tokens, bits=bits)
    assert len(data) == 3 * -(-num_tokens * bits // 8)
    assert torch.equal(unpack(data, 3, num_tokens, bits), tokens)


def test_extreme_values_round_trip():
    tokens = torch.tensor([[0] * 64 + [2**14 - 1] * 64])
    assert torch.equal(unpack(pack(tokens), 1), tokens)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="range"):
        pack(torch.tensor([[2**14]]))
    with pytest.raises(ValueError, match="shape"):
        pack(torch.zeros(128, dtype=torch.long))
    with pytest.raises(ValueError, match="bytes"):
        unpack(b"\0" * 223, num_frames=1)
