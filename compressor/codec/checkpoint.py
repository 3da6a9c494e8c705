"""Checkpoint files of the codec: what a model file may hold, and how it is read and checked before anything is built.

- ``read_checkpoint``: the weights-only torch data of a ``.pt`` or ``.ckpt`` (never pickled code).
- ``check_config`` / ``check_arguments`` / ``check_size``: a config's class paths, argument types and bounds, and
  its rough parameter count, checked in microseconds and building nothing; ``check_weights``: the weights against
  a skeleton built on the meta device (names, shapes, dtypes, finite values).
- ``part_class`` / ``build_part``: an encoder, quantizer or decoder from ``{class_path, init_args}``, only from the
  codec modules, so loading never runs code from the file.
- ``model_id``: a short hash of the weights, which every latent sample records.

Every codec (``Autoencoder``, ``ConditionalCodec``, ``VideoCodec``, ``RememberingDecoder``) reads and checks its
files through these.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os

import torch
from torch import Tensor, nn

from compressor.codec.hub import MAX_CHECKPOINT_BYTES
from compressor.utils import open_checked


CHECKPOINT_FORMAT = "compressor/1"
# What a checkpoint's config may ask for, checked before anything is built, so that a 2 KB file can neither hang
# the process (building costs time per block, whatever its width) nor exhaust its memory. Far above every shipped
# config (the largest, comma-scale-convstem.yaml: 167M parameters, width 1024, 8 blocks per stack).
MAX_PARAMETERS = 1_000_000_000
_MAX_SIZE = 1 << 16  # a width, channel count, patch side, level count, codebook size or byte budget
_MAX_DEPTH = 128  # blocks in one stack
_MAX_LIST = 16  # stride-2 stages (16 would be a 65536-pixel patch) or FSQ levels
# Only classes from these modules may be named in a checkpoint, so loading never runs arbitrary code.
_BUILDABLE_MODULES = ("compressor.codec.encoders", "compressor.codec.decoders", "compressor.codec.quantizers")
# Checkpoints written before the codec moved into compressor.codec name its modules by their old paths.
_OLD_MODULES = {"compressor.encoders": "compressor.codec.encoders", "compressor.decoders": "compressor.codec.decoders",
                "compressor.quantizers": "compressor.codec.quantizers"}



def read_checkpoint(path: str | os.PathLike):
    """The weights-only torch data of a ``.pt`` or ``.ckpt`` file (a Lightning checkpoint's ``compressor`` export
    when it carries one); ``ValueError`` for anything that is not weights-only torch data."""
    try:
        with open_checked(path, MAX_CHECKPOINT_BYTES) as f:
            blob = torch.load(f, map_location="cpu", weights_only=True)
    except (OSError, ValueError):
        raise  # missing, unreadable, not a regular file or too large: that error is already clear
    except Exception as e:  # torch raises UnpicklingError, EOFError, RuntimeError, ... for anything else
        # Not torch's text: it suggests weights_only=False, which would run whatever code the file holds.
        raise ValueError(f"{path} is not a compressor checkpoint: it does not load as weights-only torch data "
                         f"({type(e).__name__}); compressor.load reads what Autoencoder.save and train.py "
                         "write") from None
    if isinstance(blob, dict) and isinstance(blob.get("compressor"), dict):
        blob = blob["compressor"]  # a Lightning checkpoint carries the EMA export under this key
    return blob


def model_id(model: nn.Module) -> str:
    """A short hash of the weights: tokens from different weights must never be mixed silently."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def part_class(spec: dict) -> type:
    """The class a part's ``class_path`` names; only module classes of the codec modules."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    module_name = _OLD_MODULES.get(module_name, module_name)
    if module_name not in _BUILDABLE_MODULES:
        raise ValueError(f"refusing to build {spec['class_path']!r}: not a compressor module")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):  # not any callable those modules import
        raise ValueError(f"refusing to build {spec['class_path']!r}: not a module class")
    return cls


def check_size(value, name: str, where: str, high: int = _MAX_SIZE) -> None:
    if type(value) is not int or not 1 <= value <= high:  # type(): True is an int to isinstance
        raise ValueError(f"not a compressor checkpoint: {where}: {name} is {value!r}, not an integer in [1, {high}]")


def check_arguments(cls: type, init_args: dict, where: str) -> None:
    """Refuse, with ``ValueError``, constructor arguments of ``cls`` that it does not declare, or whose values do not
    have the declared type (int, list[int], float, tuple[int, int], bool, str, str | None) within bounds. Builds
    nothing."""
    params = inspect.signature(cls).parameters
    for key, value in init_args.items():
        at = f"{where}.{key}"
        kind = str(params[key].annotation) if key in params else None  # "int": the modules postpone annotations
        if key == "image_size" and key not in params:
            continue  # stored until 2026-11 without being read; build_part drops it
        if kind == "int":
            check_size(value, key, where, _MAX_DEPTH if key.endswith("depth") else _MAX_SIZE)
        elif kind in ("list[int]", "tuple[int, int]"):
            low, high = (2, 2) if kind.startswith("tuple") else (1, _MAX_LIST)
            if not (isinstance(value, (list, tuple)) and low <= len(value) <= high):
                raise ValueError(f"not a compressor checkpoint: {at} is not a list of {low} to {high} sizes")
            for v in value:
                check_size(v, key, where)
        elif kind == "float":
            if type(value) not in (int, float) or not 0 <= value <= _MAX_SIZE:  # NaN fails both comparisons
                raise ValueError(f"not a compressor checkpoint: {at} is {value!r}, not a number in [0, {_MAX_SIZE}]")
        elif kind == "bool":
            if type(value) is not bool:
                raise ValueError(f"not a compressor checkpoint: {at} is {value!r}, not true or false")
        elif kind in ("str", "str | None"):  # a choice by name (a stem's norm; a decoder's, or None): short; the
            # class itself refuses unknown names
            named = type(value) is str and 1 <= len(value) <= 32
            if not (named or (value is None and kind == "str | None")):
                raise ValueError(f"not a compressor checkpoint: {at} is {value!r:.40}, not a name of 1 to 32 "
                                 "characters")
        else:
            raise ValueError(f"not a compressor checkpoint: {at}: "
                             + ("no such argument" if kind is None else f"an argument of unchecked type {kind}"))


def check_weights(skeleton: nn.Module, state) -> None:
    """Refuse, with ``ValueError``, a ``skeleton`` (the model a file describes, built on the meta device) of more than
    ``MAX_PARAMETERS``, or weights that are not a dict of tensors with exactly its names, shapes and dtypes, or that
    hold NaN or inf."""
    if (count := sum(p.numel() for p in skeleton.parameters())) > MAX_PARAMETERS:
        raise ValueError(f"not a compressor checkpoint: its config asks for {count:,} parameters, more than "
                         f"{MAX_PARAMETERS:,}")
    expected = skeleton.state_dict()
    if not (isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values())):
        raise ValueError("not a compressor checkpoint (no state dict of tensors)")
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != found:
        wrong = sorted(set(shapes) ^ set(found)) or [k for k in shapes if shapes[k] != found[k]]
        raise ValueError(f"not a compressor checkpoint: its weights do not match its config ({len(wrong)} "
                         f"tensors differ; {wrong[0]}: {shapes.get(wrong[0])} in the model, "
                         f"{found.get(wrong[0])} in the file)")
    # load_state_dict would cast bool or int weights silently, and NaN weights (a diverged run) give tokens that
    # pass every later check once cast: refuse both here.
    for k, v in state.items():
        if v.dtype != expected[k].dtype:
            raise ValueError(f"not a compressor checkpoint: weight {k} is {v.dtype}, not {expected[k].dtype}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"not a compressor checkpoint: weight {k} holds non-finite values (NaN or inf: the "
                             "export of a diverged training run?)")


def check_config(config, where: str = "its config") -> None:
    """Refuse, with ``ValueError``, a config that is not a JSON object of three parts of codec classes whose
    arguments all have the declared types and lie within bounds, or whose rough parameter count exceeds
    ``MAX_PARAMETERS``. Runs in microseconds and builds nothing."""
    if not isinstance(config, dict):
        raise ValueError(f"not a compressor checkpoint: {where} is a {type(config).__name__}, not a JSON object")
    image_size = config.get("image_size")
    if not (isinstance(image_size, (list, tuple)) and len(image_size) == 2):
        raise ValueError(f"not a compressor checkpoint: {where}: image_size is {image_size!r}, not [H, W]")
    for side in image_size:
        check_size(side, "image_size", where)
    check_size(config.get("max_bytes_per_frame"), "max_bytes_per_frame", where)
    rough = 0
    for name in ("encoder", "quantizer", "decoder"):
        spec = config.get(name)
        if not (isinstance(spec, dict) and isinstance(spec.get("class_path"), str)
                and isinstance(spec.get("init_args"), dict)):
            raise ValueError(f"not a compressor checkpoint: {where}: {name} is not {{class_path, init_args}}")
        check_arguments(part_class(spec), spec["init_args"], f"{where}: {name}")
        # Roughly the parameters of this part, from its arguments alone: transformer (or residual) blocks of
        # about 12 dim**2, 3x3 convolutions between channel counts, linear maps of patches, the codebook.
        args = spec["init_args"]
        dim, ratio = args.get("dim", 1), args.get("mlp_ratio", 4.0)
        channels = [3, *(args.get("stem_channels") or args.get("channels") or args.get("head_channels") or [])]
        rough += args.get("depth", 0) * (4 + 2 * ratio) * dim * dim
        rough += sum(9 * (a + b) * b for a, b in zip(channels, channels[1:]))
        rough += (3 + args.get("features", 0)) * args.get("patch_size", 1) ** 2 * dim
        rough += args.get("codebook_size", 0) * dim
    if rough > MAX_PARAMETERS:
        raise ValueError(f"not a compressor checkpoint: {where} asks for about {rough:,.0f} parameters, more than "
                         f"{MAX_PARAMETERS:,}")


def build_part(spec: dict) -> nn.Module:
    """An encoder, quantizer or decoder from ``{"class_path", "init_args"}``; only classes of the codec modules."""
    cls = part_class(spec)
    init_args = dict(spec["init_args"])
    if "image_size" not in inspect.signature(cls).parameters:
        init_args.pop("image_size", None)  # encoders and decoders stored it until 2026-11, without reading it
    return cls(**init_args)


def plain(value):
    """Constructor arguments as plain lists/dicts/scalars, which weights-only loading accepts."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
