"""Hostile and diverged model files, generated here: every one is refused with a clear ``ValueError``, fast.

A diverged training run exports NaN weights; a 2 KB file can ask for a model of any size; a config can be any JSON
value; a file can be a symlink to /dev/zero. None of them may hang the process, exhaust its memory or give tokens.
"""

import json
import os
import time

import pytest
import torch

import compressor
from compressor.codec.autoencoder import Autoencoder
from compressor.codec.checkpoint import MAX_PARAMETERS
from compressor.codec.remember import RememberingDecoder
from compressor.data.synthetic import driving_clip
from compressor.entropy.stream import load_prior
from tests.conftest import tiny_model, video_codec

FRAMES = driving_clip(seed=3, num_frames=2, image_size=(128, 256))


def refused(path, match: str = "not a compressor checkpoint") -> float:
    """Load ``path``, expect a ValueError matching ``match``; the CPU seconds it took."""
    start = time.process_time()  # CPU time: the machine may be shared, and wall time would measure that instead
    with pytest.raises(ValueError, match=match) as e:
        compressor.load(path)
    assert "weights_only=False" not in str(e.value)
    return time.process_time() - start


@pytest.mark.parametrize("damage", ["nan", "inf", "float16", "float64", "int64", "bool"])
def test_non_finite_or_wrongly_typed_weights_are_refused(tmp_path, damage):
    export = tiny_model().export_dict()
    state = export["state_dict"]
    name = "encoder.embed.weight"
    if damage in ("nan", "inf"):
        state[name][0, 0] = float(damage)
        match = f"{name} holds non-finite values"
    else:
        state[name] = state[name].to(getattr(torch, damage))
        match = f"{name} is {getattr(torch, damage)}, not torch.float32"
    torch.save(export, tmp_path / "model.pt")
    refused(tmp_path / "model.pt", match)
    # the same weights in a Hub folder (safetensors)
    model = tiny_model()
    model.save_pretrained(tmp_path / "hub")
    import safetensors.torch

    weights = {k: v.contiguous() for k, v in state.items()}
    safetensors.torch.save_file(weights, str(tmp_path / "hub" / "model.safetensors"))
    refused(tmp_path / "hub", match)


def test_encode_refuses_tokens_outside_the_codebook():
    """Finite weights whose activations overflow give NaN codes; the quantizer turns them into -2**63."""
    model = tiny_model()
    with torch.no_grad():
        model.encoder.embed.weight.fill_(1e38)
    with pytest.raises(ValueError, match=r"tokens outside \[0, 15360\)"):
        model.encode(FRAMES)


def hostile_configs() -> dict:
    """name -> function(config) returning the changed config (or another JSON value)."""

    def decoder(**args):
        def change(config):
            config["decoder"]["init_args"].update(args)
            return config
        return change

    def top(key, value):
        def change(config):
            config[key] = value
            return config
        return change

    return {
        "depth 100000": decoder(depth=100_000),
        "depth 200000": decoder(depth=200_000),
        "dim 2**30": decoder(dim=2**30),
        "heads 0": decoder(heads=0),
        "patch_size 0": decoder(patch_size=0),
        "depth -1": decoder(depth=-1),
        "depth 2.5": decoder(depth=2.5),
        "depth true": decoder(depth=True),
        "mlp_ratio nan": decoder(mlp_ratio=float("nan")),
        "an unknown argument": decoder(command="touch pwned"),
        "width near the limit": decoder(dim=60_000, heads=10),  # each size within bounds, the whole far above
        # 2**1000 codes in a 3 KB file; a longer list would time torch's unpickler, not our checks
        "levels 1000 long": lambda c: {**c, "quantizer": {"class_path": c["quantizer"]["class_path"],
                                                           "init_args": {"levels": [2] * 1000}}},
        "image_size [0, 0]": top("image_size", [0, 0]),
        "image_size a string": top("image_size", "128x256"),
        "max_bytes_per_frame 2**40": top("max_bytes_per_frame", 2**40),
        "init_args a list": lambda c: {**c, "encoder": {"class_path": c["encoder"]["class_path"], "init_args": [1]}},
        "a list": lambda c: [c],
        "a string": lambda c: "compressor/1",
        "null": lambda c: None,
    }


@pytest.mark.parametrize("case", list(hostile_configs()))
def test_hostile_configs_are_refused_in_well_under_a_second(tmp_path, case):
    change = hostile_configs()[case]
    # a .pt file of a few KB: a config and no weights
    export = tiny_model().export_dict()
    export.update(config=change(export["config"]), state_dict={})
    torch.save(export, tmp_path / "model.pt")
    assert os.path.getsize(tmp_path / "model.pt") < 4096
    assert refused(tmp_path / "model.pt") < 1.0
    # a Hub folder: config.json is parsed by us first, so any JSON value is a clear error
    tiny_model().save_pretrained(tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    changed = change({k: v for k, v in config.items() if k != "format"})
    if isinstance(changed, dict):
        changed = {"format": "compressor/1", **changed}
    (tmp_path / "hub" / "config.json").write_text(json.dumps(changed))
    for loader in (compressor.load, Autoencoder.from_pretrained):
        start = time.process_time()
        with pytest.raises(ValueError, match="not a compressor|larger than"):  # the last: levels 1000 long
            loader(tmp_path / "hub")
        assert time.process_time() - start < 1.0


def test_the_parameter_limit_is_far_above_the_largest_shipped_config():
    import yaml

    from compressor.codec.checkpoint import build_part
    from compressor.utils import num_params

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "configs", "comma-scale-convstem.yaml")) as f:
        config = yaml.safe_load(f)["model"]
    with torch.device("meta"):
        parts = [build_part(config[name]) for name in ("encoder", "decoder")]
    assert 5 * sum(map(num_params, parts)) < MAX_PARAMETERS


@pytest.mark.parametrize("which", ["model.pt", "config.json", "model.safetensors"])
def test_model_files_that_are_not_regular_files_or_too_large_are_refused(tmp_path, which):
    tiny_model().save_pretrained(tmp_path / "hub")
    target = tmp_path / "model.pt" if which == "model.pt" else tmp_path / "hub" / which
    target.unlink(missing_ok=True)
    os.symlink("/dev/zero", target)  # read to the end, it never ends
    path = target if which == "model.pt" else tmp_path / "hub"
    assert refused(path, "not a regular file") < 1.0
    if which == "config.json":  # a regular file, but larger than any config
        target.unlink()
        target.write_text(json.dumps({"format": "compressor/1", "pad": " " * (2 << 20)}))
        assert refused(path, "larger than") < 1.0


@pytest.mark.parametrize("content", [b"garbage" * 10, "model", {"format": "compressor-prior/1"}])
def test_a_file_that_is_not_a_prior_is_a_clear_error(tmp_path, content):
    path = tmp_path / "prior.pt"
    if content == "model":
        tiny_model().save(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match="not a prior file") as e:
        load_prior(path)
    assert "weights_only" not in str(e.value)


def hostile_video_files() -> dict:
    """name -> (function(export) changing a tiny video codec's export in place, the error expected)."""

    def part(name, **args):  # an argument of a part of the conditional model
        def change(export):
            export["inter"][name]["init_args"].update(args)
        return change

    def set_(*keys, value):
        def change(export):
            d = export
            for k in keys[:-1]:
                d = d[k]
            d[keys[-1]] = value
        return change

    def weight(fn):
        def change(export):
            state = export["inter"]["state_dict"]
            state["decoder.head.weight"] = fn(state["decoder.head.weight"])
        return change

    big = "not a compressor checkpoint"
    return {
        "encoder depth 100000": (part("encoder", depth=100_000), big),
        "decoder dim 2**30": (part("decoder", dim=2**30), big),
        "widths near the limit": (lambda e: [part(p, dim=60_000, heads=10)(e) for p in ("encoder", "decoder")],
                                  "parameters"),
        "merge 0": (set_("inter", "merge", value=0), big),
        "merge that does not divide the grid": (set_("inter", "merge", value=3), "must tile"),
        "heads that do not divide the width": (part("encoder", heads=3), big),
        "patch_size 2.5": (part("encoder", patch_size=2.5), big),
        "patches that differ": (part("decoder", patch_size=8), "patch"),
        "an encoder of 3 channels": (part("encoder", in_channels=3), "in_channels=6"),
        "a decoder that reads no reference": (set_("inter", "decoder", "class_path",
                                                   value="compressor.codec.decoders.ViTDecoder"), big),
        "image_size a string": (set_("inter", "image_size", value="128x256"), big),
        "an unknown argument": (part("decoder", command="touch pwned"), "no such argument"),
        "quantizer levels 1000 long": (set_("inter", "quantizer", "init_args", "levels", value=[2] * 1000), big),
        "quantizer not a module": (set_("inter", "quantizer", "class_path", value="os.system"), "refusing to build"),
        "encoder not a module": (set_("inter", "encoder", "class_path", value="os.system"), "refusing to build"),
        "quantizer an encoder": (set_("inter", "quantizer", "class_path",
                                      value="compressor.codec.encoders.ViTEncoder"), big),
        "over the budget": (set_("inter", "max_bytes_per_frame", value=16), "exceeds the budget"),
        "inter a list": (set_("inter", value=[1]), big),
        "inter missing": (lambda e: e.pop("inter"), big),
        "intra missing": (lambda e: e.pop("intra"), big),
        "gop 0": (set_("gop", value=0), "gop"),
        "gop 2**40": (set_("gop", value=2**40), "gop"),
        "gop a string": (set_("gop", value="8"), "gop"),
        "a NaN weight": (weight(lambda w: w.index_fill(0, torch.tensor([0]), float("nan"))), "non-finite"),
        "a weight of the wrong shape": (weight(lambda w: w[:-1]), "do not match"),
        "a bool weight": (weight(lambda w: w > 0), "torch.bool"),
        "a weight missing": (lambda e: e["inter"]["state_dict"].pop("decoder.head.weight"), "do not match"),
        # files written before the conditional model was composed of parts: the old arguments, checked as strictly
        "old layout: enc_depth 100000": (legacy_inter(enc_depth=100_000), big),
        "old layout: widths near the limit": (legacy_inter(enc_dim=60_000, dec_dim=60_000, enc_heads=10,
                                                           dec_heads=10), "parameters"),
        "old layout: an unknown argument": (legacy_inter(command="touch pwned"), "no such argument"),
        "old layout: overlap a string": (legacy_inter(overlap="yes"), "overlap is 'yes'"),
        "old layout: motion a string": (legacy_inter(motion="yes"), "motion is 'yes'"),
        "old layout: a weight missing": (legacy_inter(drop="head.weight"), "do not match"),
    }


def legacy_inter(drop: str | None = None, **args):
    """A change that rewrites the conditional model of a video export in the layout written before it was composed of
    parts (``tests.test_video_tokens.to_legacy``), then sets old arguments ``args`` or drops weight ``drop``."""
    from tests.test_video_tokens import to_legacy

    def change(export):
        export["inter"] = to_legacy(export["inter"])
        export["inter"]["init_args"].update(args)
        if drop:
            export["inter"]["state_dict"].pop(drop)
    return change


@pytest.mark.parametrize("case", list(hostile_video_files()))
def test_hostile_video_codec_files_are_refused_in_well_under_a_second(tmp_path, case):
    """A video.pt is two models and a group size: every part is checked before anything is built at full size."""
    change, match = hostile_video_files()[case]
    export = video_codec().export_dict()
    change(export)
    torch.save(export, tmp_path / "video.pt")
    assert refused(tmp_path / "video.pt", match) < 1.0


def video_folder(export, folder) -> None:
    """A Hub folder holding what a (changed) video.pt export holds, as VideoCodec.save_pretrained lays it out:
    config.json (format, gop, the intra config, the conditional arguments) and model.safetensors (prefixed)."""
    import safetensors.torch

    config, state = {}, {}
    for key, value in export.items():
        if key in ("intra", "inter") and isinstance(value, dict):
            state.update({f"{key}.{k}": v.contiguous() for k, v in value.get("state_dict", {}).items()})
            value = value["config"] if key == "intra" else {k: v for k, v in value.items() if k != "state_dict"}
        config[key] = value
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize("case", list(hostile_video_files()))
def test_hostile_video_folders_are_refused_in_well_under_a_second(tmp_path, case):
    """The same damage as in a video.pt, in a Hub folder: the same checks refuse it, whichever loader reads it."""
    from compressor.codec.video import VideoCodec

    change, match = hostile_video_files()[case]
    export = video_codec().export_dict()
    change(export)
    video_folder(export, tmp_path / "hub")
    assert refused(tmp_path / "hub", match) < 1.0
    start = time.process_time()
    with pytest.raises(ValueError, match=match):
        VideoCodec.from_pretrained(tmp_path / "hub")
    assert time.process_time() - start < 1.0


def video_folder_damage() -> dict:
    """name -> (function(folder) damaging a tiny video codec's Hub folder, the error expected)."""

    def config(change):
        def damage(folder):
            path = folder / "config.json"
            path.write_text(json.dumps(change(json.loads(path.read_text()))))
        return damage

    def weights(change):
        def damage(folder):
            import safetensors.torch

            state = safetensors.torch.load_file(folder / "model.safetensors")
            change(state)
            safetensors.torch.save_file(state, str(folder / "model.safetensors"))
        return damage

    def intra_encoder(class_path):
        def damage(folder):
            path = folder / "config.json"
            c = json.loads(path.read_text())
            c["intra"]["encoder"] = {"class_path": class_path, "init_args": {"command": f"touch {folder / 'pwned'}"}}
            path.write_text(json.dumps(c))
        return damage

    return {
        "config not JSON": (lambda f: (f / "config.json").write_text("{not json"), "is not JSON"),
        "config a list": (config(lambda c: [c]), "not a JSON object"),
        "config too large": (config(lambda c: {**c, "pad": " " * (2 << 20)}), "larger than"),
        "config of another library": (config(lambda c: {"hidden_size": 4}), "not a compressor"),
        "config of a per-frame model": (config(lambda c: {**c, "format": "compressor/1"}), "not a compressor"),
        "config a symlink to /dev/zero": (lambda f: (f / "config.json").unlink() or os.symlink("/dev/zero",
                                                                                               f / "config.json"),
                                          "not a regular file"),
        "an intra class that runs a command": (intra_encoder("os.system"), "refusing to build 'os.system'"),
        "an intra class of another package": (intra_encoder("torch.nn.Identity"), "refusing to build"),
        "no weights": (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
        "weights not safetensors": (lambda f: (f / "model.safetensors").write_bytes(b"not safetensors"),
                                    "does not load as safetensors"),
        "weights truncated": (lambda f: (f / "model.safetensors").write_bytes(
            (f / "model.safetensors").read_bytes()[:1000]), "does not load as safetensors"),
        "weights a symlink to /dev/zero": (lambda f: (f / "model.safetensors").unlink() or os.symlink(
            "/dev/zero", f / "model.safetensors"), "not a regular file"),
        "an intra weight of the wrong shape": (weights(lambda s: s.update({"intra.pre_quant.weight": s[
            "intra.pre_quant.weight"][:-1].contiguous()})), "do not match"),
        "a tensor of neither part": (weights(lambda s: s.update({"extra": torch.zeros(1)})), "neither the intra"),
        "the two parts' weights swapped": (weights(lambda s: [s.update({k.replace("intra.", "inter.") if k.startswith(
            "intra.") else k.replace("inter.", "intra."): s.pop(k)}) for k in list(s)]), "do not match"),
    }


@pytest.mark.parametrize("case", list(video_folder_damage()))
def test_damaged_video_folders_are_refused(tmp_path, case):
    """What only a folder can get wrong (config.json, model.safetensors): a clear ValueError, nothing run."""
    from compressor.codec.video import VideoCodec

    damage, match = video_folder_damage()[case]
    video_codec().save_pretrained(tmp_path / "hub")
    damage(tmp_path / "hub")
    assert refused(tmp_path / "hub", match) < 1.0
    with pytest.raises(ValueError, match=match):
        VideoCodec.from_pretrained(tmp_path / "hub")
    assert not (tmp_path / "hub" / "pwned").exists()


def test_an_intact_video_codec_file_loads(tmp_path):
    """The checks above refuse nothing that VideoCodec.save writes: the loaded codec gives the same tokens."""
    codec = video_codec()
    codec.save(tmp_path / "video.pt")
    frames = FRAMES.repeat(2, 1, 1, 1)
    loaded = compressor.load(tmp_path / "video.pt")
    assert [t.tolist() for t in loaded.encode_clip(frames)[0]] == [t.tolist() for t in codec.encode_clip(frames)[0]]


@pytest.mark.parametrize("case", ["history 10**9", "history a string", "a NaN weight", "a weight missing",
                                  "intra missing", "not torch data"])
def test_hostile_remembering_decoder_files_are_refused(tmp_path, case):
    from compressor.codec.remember import RememberingDecoder, load_remembering

    export = RememberingDecoder(tiny_model(), history=2).export_dict()
    state = export["state_dict"]
    change, match = {
        "history 10**9": (lambda: export.update(history=10**9), "history is 1000000000"),
        "history a string": (lambda: export.update(history="2"), "history is '2'"),
        "a NaN weight": (lambda: state["past.0.weight"].fill_(float("nan")), "non-finite"),
        "a weight missing": (lambda: state.pop("missing"), "do not match"),
        "intra missing": (lambda: export.pop("intra"), "not a compressor checkpoint"),
        "not torch data": (None, "does not load as weights-only torch data"),
    }[case]
    path = tmp_path / "remembering.pt"
    if change is None:
        path.write_bytes(b"garbage" * 10)
    else:
        change()
        torch.save(export, path)
    start = time.process_time()
    with pytest.raises(ValueError, match=match):
        load_remembering(path)
    assert time.process_time() - start < 1.0


# ---- tokens outside the codebook -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["codebook size", "-1", "a float"])
def test_every_decoder_refuses_tokens_outside_the_codebook(bad):
    """The per-frame decoder refused them; the conditional and remembering decoders took them modulo the radix."""
    codec = video_codec(gop=2)
    tokens, _ = codec.encode_clip(FRAMES)  # [intra (128,), conditional (128,)]
    for t, limit in [(0, codec.intra.codebook_size), (1, codec.inter.codebook_size)]:
        tokens[t] = tokens[t].float() if bad == "a float" else tokens[t].clone()
        if bad != "a float":
            tokens[t][5] = limit if bad == "codebook size" else -1
    match = "integer" if bad == "a float" else r"tokens must lie in \[0, "
    with pytest.raises(ValueError, match=match):
        codec.inter.decode(tokens[1][None], codec.intra.reconstruct(codec.intra.encode(FRAMES[:1])))
    with pytest.raises(ValueError, match=match):
        codec.decode_clip([codec.intra.encode(FRAMES[:1])[0], tokens[1]])
    with pytest.raises(ValueError, match=match):
        RememberingDecoder(codec.intra, history=1).decode_clip(torch.stack([tokens[0], tokens[0]]))
