import torch

from compressor.tools import fsq_digits
from tests.conftest import tiny_model


def test_a_channel_pinned_to_one_end_shows_as_saturated_and_empty():
    model = tiny_model("vit", "fsq")
    with torch.no_grad():
        model.pre_quant.bias[3] = -20.0  # channel 3 sits far beyond tanh's range: always its lowest level
    frames = torch.randint(0, 256, (4, 3, 128, 256), dtype=torch.uint8)
    stats = fsq_digits.fsq_digits(model, frames)
    ch = stats["channels"]
    assert stats["tokens"] == 4 * 128
    assert ch[3]["saturated"] == 1.0 and ch[3]["entropy_bits"] == 0.0 and ch[3]["level_share"][0] == 1.0
    assert all(c["saturated"] < 0.5 for i, c in enumerate(ch) if i != 3)
    assert stats["joint_entropy_bits"] <= stats["sum_of_channel_entropies_bits"] + 1e-9
    assert stats["codes_used"] <= 2 ** stats["joint_entropy_bits"] * 64  # sanity: entropy and count agree in scale


def test_standardized_fsq_is_measured_after_its_standardization():
    model = tiny_model("vit", "fsq-std").train()
    model.quantizer.norm.momentum = 0.5  # converge in a few steps
    frames = torch.randint(0, 256, (4, 3, 128, 256), dtype=torch.uint8)
    with torch.no_grad():
        model.pre_quant.bias[3] = -20.0
        for _ in range(50):  # running statistics learn the offset
            model(frames.float() / 127.5 - 1)
    stats = fsq_digits.fsq_digits(model.eval(), frames)
    assert stats["channels"][3]["saturated"] < 0.5 and abs(stats["channels"][3]["z_mean"]) < 0.5
