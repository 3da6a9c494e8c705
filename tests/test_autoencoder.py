import argparse

import pytest
import torch

import compressor
from compressor.codec.autoencoder import Autoencoder
from tests.conftest import DECODERS, ENCODERS, QUANTIZERS, tiny_model


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("design", ENCODERS)
def test_forward_backward_finite(design, quantizer):
    model = tiny_model(design, quantizer).train()
    x = torch.rand(2, 3, 128, 256) * 2 - 1
    out = model(x)
    assert out["recon"].shape == x.shape
    assert out["tokens"].shape == (2, 128)
    loss = (out["recon"] - x).pow(2).mean() + out["quant_loss"]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    first = next(model.encoder.parameters())  # the encoder's first layer (patch embedding or first conv)
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradient reaches through the quantizer


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("design", ENCODERS)
def test_codec_contract(design, quantizer):
    model = tiny_model(design, quantizer)
    frames = torch.randint(0, 256, (3, 3, 128, 256), dtype=torch.uint8)
    tokens = model.encode(frames)
    assert tokens.shape == (3, model.num_tokens) == (3, 128)
    assert not tokens.dtype.is_floating_point
    assert tokens.min() >= 0 and tokens.max() < model.codebook_size <= 2**14
    recon = model.decode(tokens)
    assert recon.dtype == torch.uint8 and recon.shape == frames.shape
    assert not recon.requires_grad
    assert model.bytes_per_frame == 224 and len(compressor.pack(tokens)) == 3 * 224


def test_codec_matches_training_forward():
    model = tiny_model()
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    with torch.no_grad():
        out = model(frames.float() / 127.5 - 1)
    tokens = model.encode(frames)
    assert torch.equal(tokens, out["tokens"])
    expected = ((out["recon"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert (model.decode(tokens).int() - expected.int()).abs().max() <= 1


def test_encode_decode_deterministic():
    model = tiny_model("convstem")
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    t1, t2 = model.encode(frames), model.encode(frames)
    assert torch.equal(t1, t2)
    assert torch.equal(model.decode(t1), model.decode(t2))
    assert torch.equal(model.encode(frames[:1]), t1[:1])  # independent of batch composition


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("design", ENCODERS)
def test_save_load_gives_identical_tokens(tmp_path, design, quantizer):
    model = tiny_model(design, quantizer)
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = compressor.load(path)
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    tokens = model.encode(frames)
    assert torch.equal(loaded.encode(frames), tokens)
    assert torch.equal(loaded.decode(tokens), model.decode(tokens))
    assert type(loaded.encoder) is type(model.encoder) and type(loaded.quantizer) is type(model.quantizer)


def test_load_refuses_foreign_classes(tmp_path):
    export = tiny_model().export_dict()
    export["config"]["encoder"]["class_path"] = "os.system"
    torch.save(export, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing"):
        compressor.load(tmp_path / "evil.pt")


def test_load_is_weights_only(tmp_path):
    # Any pickled object outside the tensor/primitive allowlist must be refused, not executed.
    torch.save({"format": "compressor/1", "payload": argparse.Namespace(x=1)}, tmp_path / "pickle.pt")
    with pytest.raises(Exception, match="(?i)weights"):
        compressor.load(tmp_path / "pickle.pt")


@pytest.mark.parametrize(
    "frames,match",
    [
        (torch.zeros(1, 3, 128, 256), "uint8"),
        (torch.zeros(3, 128, 256, dtype=torch.uint8), "shape"),
        (torch.zeros(1, 3, 120, 256, dtype=torch.uint8), "shape"),
        (torch.zeros(1, 4, 128, 256, dtype=torch.uint8), "shape"),
        ([[0]], "Tensor"),
    ],
)
def test_encode_rejects_bad_frames(frames, match):
    with pytest.raises(ValueError, match=match):
        tiny_model().encode(frames)


@pytest.mark.parametrize(
    "tokens,match",
    [
        (torch.zeros(1, 128), "integer"),
        (torch.zeros(1, 127, dtype=torch.long), "shape"),
        (torch.full((1, 128), 15360), "range"),
        (torch.full((1, 128), -1), "range"),
    ],
)
def test_decode_rejects_bad_tokens(tokens, match):
    with pytest.raises(ValueError, match=match):
        tiny_model().decode(tokens)


def test_budget_is_asserted():
    # 256x512 on a 16-pixel grid is 512 tokens = 896 bytes: over the default 224-byte budget.
    with pytest.raises(ValueError, match="budget"):
        Autoencoder(ENCODERS["vit"](), QUANTIZERS["fsq"](), DECODERS["vit"](), image_size=(256, 512))


def test_same_weights_run_at_256x512_with_a_raised_budget(tmp_path):
    tiny_model().save(tmp_path / "m.pt")
    model = compressor.load(tmp_path / "m.pt", image_size=(256, 512), max_bytes_per_frame=896)
    tokens = model.encode(torch.randint(0, 256, (1, 3, 256, 512), dtype=torch.uint8))
    assert tokens.shape == (1, 512) and model.bytes_per_frame == 896
    assert model.decode(tokens).shape == (1, 3, 256, 512)


def test_refine_decoder_starts_as_the_linear_head_and_learns_a_correction():
    from compressor.codec.decoders import ViTDecoder, ViTRefineDecoder

    torch.manual_seed(0)
    refine = ViTRefineDecoder(dim=48, depth=1, heads=2, features=5, hidden=8)
    linear = ViTDecoder(dim=48, depth=1, heads=2)
    linear.transformer.load_state_dict(refine.transformer.state_dict())
    # The RGB rows of the refine head are the linear head's rows, in unpatchify's (p q c) order.
    rows = torch.arange(refine.head.out_features).view(16 * 16, 8)[:, :3].flatten()
    linear.head.weight.data.copy_(refine.head.weight.data[rows])
    linear.head.bias.data.copy_(refine.head.bias.data[rows])
    x = torch.randn(2, 128, 48)
    assert torch.allclose(refine(x, (8, 16)), linear(x, (8, 16)), atol=1e-6)  # the correction starts at zero
    refine(x, (8, 16)).square().mean().backward()
    assert refine.refine[-1].weight.grad.abs().sum() > 0  # and it trains


def test_exports_whose_parts_still_carry_image_size_load(tmp_path):
    # Encoders and decoders took an unused image_size until 2026-11; models exported then must keep loading.
    model = tiny_model().eval()
    export = model.export_dict()
    for part in ("encoder", "decoder"):
        export["config"][part]["init_args"]["image_size"] = [128, 256]
    torch.save(export, tmp_path / "old.pt")
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    assert torch.equal(compressor.load(tmp_path / "old.pt").encode(frames), model.encode(frames))


@pytest.mark.parametrize("part", ["encoder", "quantizer", "decoder"])
def test_exports_naming_the_old_module_paths_load(tmp_path, part):
    # Checkpoints written before the codec moved into compressor.codec name compressor.quantizers.FSQ and so on.
    # Those alias modules are gone; the loader maps the old names, and only onto the codec modules.
    model = tiny_model().eval()
    export = model.export_dict()
    new = export["config"][part]["class_path"]
    export["config"][part]["class_path"] = new.replace("compressor.codec.", "compressor.")
    assert export["config"][part]["class_path"].count(".") == 2  # e.g. compressor.quantizers.FSQ
    torch.save(export, tmp_path / "old.pt")
    frames = torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8)
    loaded = compressor.load(tmp_path / "old.pt")
    assert f"{type(getattr(loaded, part)).__module__}.{type(getattr(loaded, part)).__name__}" == new
    assert torch.equal(loaded.encode(frames), model.encode(frames))


@pytest.mark.parametrize("quantizer", ["fsq", "fsq-std", "fsq-white"])
def test_token_search_never_loses_to_the_encoder_and_leaves_the_model_alone(quantizer):
    model = tiny_model("vit", quantizer)
    frames = torch.randint(0, 256, (3, 3, 128, 256), dtype=torch.uint8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain, searched = model.encode(frames), model.encode(frames, search_steps=8)
    assert searched.shape == plain.shape and searched.dtype == torch.int64
    assert int(searched.min()) >= 0 and int(searched.max()) < model.codebook_size
    error = lambda tokens: (model.decode(tokens).float() - frames.float()).pow(2).flatten(1).mean(1)  # noqa: E731
    assert (error(searched) <= error(plain) + 1e-3).all() and error(searched).mean() < error(plain).mean()
    assert torch.equal(model.encode(frames, search_steps=8), searched)  # deterministic
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_token_search_needs_fsq():
    with pytest.raises(ValueError, match="FSQ"):
        tiny_model("vit", "vq").encode(torch.zeros(1, 3, 128, 256, dtype=torch.uint8), search_steps=1)


def test_overlap_decoder_is_continuous_across_patch_borders():
    from compressor.codec.decoders import ViTOverlapDecoder

    decoder = ViTOverlapDecoder(patch_size=16, dim=48, depth=1, heads=2)
    with torch.no_grad():  # every tile paints its own flat colour: a linear head would give 16-px blocks
        decoder.head.weight.zero_()
        decoder.head.bias.zero_()
        decoder.transformer = torch.nn.Identity()
        out_flat = decoder(torch.zeros(1, 128, 48), (8, 16))
        assert out_flat.abs().max() < 1e-6
        decoder.head.bias.fill_(0.5)
        assert (decoder(torch.zeros(1, 128, 48), (8, 16)) - 0.5).abs().max() < 1e-5  # tiles sum to one everywhere
        decoder.head.weight.normal_(0, 0.02)
        frames = decoder(torch.randn(1, 128, 48), (8, 16))
    # Steps across a patch border (column 15 -> 16) are no larger than steps inside a patch.
    across = (frames[..., 16::16] - frames[..., 15:-1:16]).abs().mean()
    inside = (frames[..., 8::16] - frames[..., 7:-1:16]).abs().mean()
    assert across < 2 * inside
