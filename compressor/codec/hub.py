"""The Hugging Face Hub folder of a codec: ``config.json`` + ``model.safetensors`` + a ``README.md`` card.

- ``HubFolder``: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (``PyTorchModelHubMixin``) with every
  read checked, for the per-frame ``Autoencoder`` and the ``VideoCodec`` alike: a hostile or damaged folder is a
  ``ValueError`` before anything is built, and loading never runs code from it.
- ``folder_config``: the checked ``config.json`` of a local folder, whose ``format`` says which codec it holds.
- ``model_card`` / ``video_card``: what a user of the folder must know before trusting its tokens: the mode, the
  parts and their arguments, and the token budget. Training and evaluation sections come from the caller
  (``compressor.training.model_card``, ``write_evaluation``), so this module needs no Lightning.

It imports neither codec module (both import it): the models are duck-typed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, PyTorchModelHubMixin, constants, hf_hub_download
from torch import Tensor, nn

from compressor.utils import load_json, num_params, open_checked

MAX_CONFIG_BYTES = 1 << 20  # config.json
MAX_CHECKPOINT_BYTES = 16 << 30  # a .pt, .ckpt or model.safetensors (a Lightning .ckpt adds optimizer state)


def folder_config(folder: str | os.PathLike) -> dict | None:
    """The ``config.json`` of a local folder as a dict, or None when the folder has none. ``ValueError`` unless it
    is a regular file of at most ``MAX_CONFIG_BYTES`` holding a JSON object (the mixin would read any file to its
    end, and fail on anything but an object with an ``AttributeError``)."""
    path = os.path.join(folder, constants.CONFIG_NAME)
    if not os.path.lexists(path):
        return None
    with open_checked(path, MAX_CONFIG_BYTES) as f:
        try:
            config = load_json(f.read())
        except ValueError as e:
            raise ValueError(f"{folder} is not a compressor model folder: {path} is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{folder} is not a compressor model folder: {path} is a {type(config).__name__}, not a "
                         "JSON object")
    return config


class HubFolder(PyTorchModelHubMixin):
    """The Hub folder of a codec, ``PyTorchModelHubMixin``'s file layout with checked reads.

    A subclass sets ``FORMAT`` (``config.json``'s ``"format"``, so no other library's config is mistaken for ours)
    and gives ``hub_config()`` (the rest of ``config.json``, plain JSON), ``check_hub_config(config, overrides,
    where)`` (types and sizes only, builds nothing: a bad config is refused before the weights are read) and
    ``from_hub(config, state, where, **overrides)`` (the model, through the checks its ``.pt`` file gets: class
    allow-list, shapes on the meta device, finite weights). ``overrides`` are what the mixin passes on: the config's
    entries named like constructor arguments, replaced by any the caller gave (``image_size=...``, ``gop=...``).
    """

    FORMAT: str

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs) -> str | None:
        """Write ``config.json``, ``model.safetensors`` and a ``README.md`` card (kept if one exists) to a folder
        that ``compressor.load`` reads; ``push_to_hub`` uploads the same files. Other keyword arguments go to
        ``PyTorchModelHubMixin.save_pretrained`` (``model_card_kwargs`` reach ``generate_model_card``)."""
        own = {"format": self.FORMAT, **self.hub_config()}
        # push_to_hub passes config=None, and save_pretrained(push_to_hub=True) passes back our own; anything else
        # would not describe these weights.
        if config is not None and config != own:
            raise ValueError(f"the config of a {type(self).__name__} is derived from its parts; do not pass one")
        return super().save_pretrained(save_directory, config=own, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs):
        """``PyTorchModelHubMixin.from_pretrained`` (a local folder or a Hub repo id), with a local folder's
        ``config.json`` checked first (``folder_config``) and its format compared with ``FORMAT``."""
        folder = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(folder) and (config := folder_config(folder)) is not None:
            check_format(config, cls.FORMAT, folder)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        # Cloned tensors, not safetensors.save_model: they share no storage, so every name (buffers such as
        # BatchNorm running stats and VQ usage included) is written and read back as is.
        state = {k: v.detach().cpu().clone().contiguous() for k, v in self.state_dict().items()}
        safetensors.torch.save_file(state, str(save_directory / constants.SAFETENSORS_SINGLE_FILE),
                                    metadata={"format": self.FORMAT})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         config: dict | None = None, map_location: str | torch.device = "cpu", **overrides):
        """Called by ``from_pretrained`` with the parsed ``config.json``: the config is checked, then the weights
        are read (from the folder, or the Hub through its cache), then ``from_hub`` builds the model."""
        check_format(config, cls.FORMAT, model_id)
        cls.check_hub_config(config, overrides, f"{model_id}/{constants.CONFIG_NAME}")
        state = read_weights(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                             token=token, local_files_only=local_files_only)
        return cls.from_hub(config, state, model_id, **overrides).to(map_location)


def check_format(config, fmt: str, folder: str) -> None:
    """``ValueError`` unless ``config`` is a dict whose ``format`` is ``fmt``."""
    found = config.get("format") if isinstance(config, dict) else None
    if found != fmt:
        hint = (" (compressor.load reads every compressor folder and returns the class its format names)"
                if str(found).startswith("compressor") else "")
        raise ValueError(f"{folder} is not a compressor model folder of format {fmt!r}: its "
                         f"{constants.CONFIG_NAME} is " + ("missing" if config is None else f"of format {found!r}")
                         + hint)


def read_weights(model_id: str, **download) -> dict[str, Tensor]:
    """The tensors of a folder's ``model.safetensors`` (a regular file of a sane size, not /dev/zero), or of a Hub
    repo's through ``hf_hub_download(**download)``, served from the cache when offline; ``ValueError`` if missing or
    not safetensors."""
    if os.path.isdir(model_id):
        weights = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
        if not os.path.lexists(weights):
            raise ValueError(f"{model_id} is not a compressor model folder: no {constants.SAFETENSORS_SINGLE_FILE}")
        open_checked(weights, MAX_CHECKPOINT_BYTES).close()
    else:
        weights = hf_hub_download(repo_id=model_id, filename=constants.SAFETENSORS_SINGLE_FILE, **download)
    try:
        return safetensors.torch.load_file(weights, device="cpu")
    except Exception as e:  # SafetensorError, OSError from a truncated or foreign file
        raise ValueError(f"{model_id} is not a compressor model folder: {weights} does not load as safetensors "
                         f"({type(e).__name__})") from None


# ---- model cards ----------------------------------------------------------------------------------------------
_SAFE_LOADING = ("Loading rebuilds the parts from the class paths in `config.json`; only classes of the `compressor` "
                 "codec modules are accepted, and the weights are read from `model.safetensors`, so no code from the "
                 "folder runs.")


def _part_row(name: str, part: nn.Module) -> str:
    """A row of the architecture table: | part | class | arguments | parameters |."""
    args = ", ".join(f"{k}={v}" for k, v in part.init_args.items())
    return f"| {name} | `{type(part).__module__}.{type(part).__name__}` | {args} | {num_params(part):,} |"


def _card(card_data: ModelCardData, lines: list[str], sections: dict[str, str] | None, image: str | None) -> ModelCard:
    """YAML front matter from ``card_data`` (library name, tags; no license is claimed), ``lines``, then
    ``sections`` (title -> markdown) in order, and ``image`` (a file name inside the folder) at the end."""
    for title, body in (sections or {}).items():
        lines += [f"## {title}", "", body.rstrip(), ""]
    if image:
        lines += [f"![Originals above, reconstructions below]({image})", ""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def model_card(model: nn.Module, card_data: ModelCardData, sections: dict[str, str] | None = None,
               image: str | None = None) -> ModelCard:
    """The card of ``model``, an ``Autoencoder``: the mode, a usage snippet, the token budget, the architecture,
    then ``sections`` and ``image`` (``_card``)."""
    H, W = model.image_size
    gh, gw = model.grid
    lines = [
        "# compressor: dashcam frames to discrete tokens", "",
        f"A learned image codec: an RGB frame of {H}x{W} becomes {model.num_tokens} discrete tokens of "
        f"{model.bits_per_token} bits ({model.bytes_per_frame} bytes), and back.", "",
        "Mode: per-frame. Every frame is coded on its own, so any frame's tokens decode alone. (A video codec, "
        "`compressor.codec.video.VideoCodec`, codes groups of an intra frame and conditional frames instead; its "
        "folder's card says \"Mode: video\", and `compressor.load` tells the two apart.)", "",
        "## Usage", "",
        "```python",
        "import torch",
        "import compressor  # the package that wrote this folder",
        "",
        "model = compressor.load(\"path/to/this/folder\")  # or compressor.Autoencoder.from_pretrained(\"user/repo\")",
        "# The training preprocessing (crop, resize, colour) of each decoded RGB frame: uint8 (3, H, W).",
        f"frames = torch.stack([compressor.preprocess(f, ({H}, {W})) for f in video_frames])",
        f"tokens = model.encode(frames)      # uint8 (B, 3, {H}, {W}) -> int64 (B, {model.num_tokens})",
        f"data = compressor.pack(tokens, bits={model.bits_per_token})  # {model.bytes_per_frame} bytes per frame",
        f"recon = model.decode(compressor.unpack(data, len(tokens), {model.num_tokens}, {model.bits_per_token}))",
        "```", "",
        _SAFE_LOADING, "",
        "## Token budget", "",
        "| tokens | grid (H x W) | bits/token | bytes/frame | codebook size | budget |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {model.num_tokens} | {gh} x {gw} | {model.bits_per_token} | {model.bytes_per_frame} | "
        f"{model.codebook_size} | {model.max_bytes_per_frame} B |", "",
        "## Architecture", "",
        "| part | class | arguments | parameters |", "|---|---|---|---:|",
        *(_part_row(name, getattr(model, name)) for name in ("encoder", "quantizer", "decoder")),
        f"| total (with the linear maps around the quantizer) | | | {num_params(model):,} |", "",
    ]
    return _card(card_data, lines, sections, image)


def video_card(codec: nn.Module, card_data: ModelCardData, sections: dict[str, str] | None = None,
               image: str | None = None) -> ModelCard:
    """The card of ``codec``, a ``VideoCodec``: the mode and group, the frame types and their token budgets
    (``frame_formats()``), a usage snippet, both parts' architectures, then ``sections`` and ``image``."""
    H, W = codec.image_size
    gop, formats = codec.gop, codec.frame_formats()
    I, P = formats["I"], formats["P"]
    group_bytes = I["bytes_per_frame"] + (gop - 1) * P["bytes_per_frame"]
    lines = [
        "# compressor: dashcam video to discrete tokens", "",
        f"A learned video codec: RGB frames of {H}x{W}, in order, become discrete tokens, and back.", "",
        f"Mode: video, in groups of {gop} frames (gop {gop}): an intra frame (I) coded on its own, then {gop - 1} "
        "conditional frames (P), each coded given the decoded previous frame. A clip decodes from an intra frame "
        "on, so frame t is intra when t % gop == 0 and a conditional frame's tokens do not decode alone. (A "
        "per-frame model's folder says \"Mode: per-frame\"; `compressor.load` tells the two apart.)", "",
        "## Usage", "",
        "```python",
        "import torch",
        "import compressor  # the package that wrote this folder",
        "",
        "codec = compressor.load(\"path/to/this/folder\")  # or compressor.codec.video.VideoCodec.from_pretrained(...)",
        "# The training preprocessing (crop, resize, colour) of each decoded RGB frame of one clip, in order.",
        f"frames = torch.stack([compressor.preprocess(f, ({H}, {W})) for f in video_frames])  # uint8 (T, 3, {H}, {W})",
        f"tokens, recon = codec.encode_clip(frames)  # int64 tokens of each frame: {I['num_tokens']} (I), "
        f"{P['num_tokens']} (P)",
        "frames_out = codec.decode_clip(tokens)     # uint8 (T, 3, H, W), equal to recon",
        "```", "",
        _SAFE_LOADING, "",
        "## Frame types and token budgets", "",
        "| frame type | frames of a group | tokens | layout | bits/token | bytes/frame | codebook size |",
        "|---|---:|---:|---|---:|---:|---:|",
        *(f"| {name} | {count} | {f['num_tokens']} | {f['token_layout']} | {f['bits_per_token']} | "
          f"{f['bytes_per_frame']} | {f['codebook_size']} |"
          for name, count, f in (("I (intra)", 1, I), ("P (conditional)", gop - 1, P))), "",
        f"A group of {gop} frames takes {group_bytes} bytes ({group_bytes / gop:.1f} bytes/frame) before entropy "
        "coding.", "",
        "## Architecture", "",
        "| part | class | arguments | parameters |", "|---|---|---|---:|",
        *(_part_row(f"intra {name}", getattr(codec.intra, name)) for name in ("encoder", "quantizer", "decoder")),
        f"| intra total (with the linear maps around the quantizer) | | | {num_params(codec.intra):,} |",
        *(_part_row(f"conditional {name}", getattr(codec.inter, name)) for name in ("encoder", "quantizer", "decoder")),
        f"| conditional total (with the linear maps around the quantizer; merge {codec.inter.merge}) | | | "
        f"{num_params(codec.inter):,} |",
        f"| total | | | {num_params(codec):,} |", "",
    ]
    return _card(card_data, lines, sections, image)


def remembering_card(codec: nn.Module, card_data: ModelCardData, sections: dict[str, str] | None = None,
                     image: str | None = None) -> ModelCard:
    """The card of ``codec``, a ``RememberingCodec``: per-frame tokens decoded with the frames before them."""
    H, W = codec.image_size
    lines = [
        "# compressor: dashcam frames to discrete tokens, decoded with memory", "",
        f"Per-frame tokens ({codec.num_tokens} of {codec.bits_per_token} bits, {codec.bytes_per_frame} bytes a "
        f"{H}x{W} frame), each frame coded alone, decoded with the tokens of up to {codec.history} frames before it.",
        "", "Mode: per-frame tokens, remembering decoder. The tokens are the intra model's: any frame's tokens decode "
        "alone, and better after the frames before them (`compressor.load` returns this codec).", "",
        "```python", "codec = compressor.load(\"path/to/this/folder\")",
        "tokens, recon = codec.encode_clip(frames)  # frames: uint8 (T, 3, H, W) of one clip, in order",
        "frames_out = codec.decode_clip(tokens)", "```", "", _SAFE_LOADING, "",
        "## Architecture", "", "| part | class | arguments | parameters |", "|---|---|---|---:|",
        *(_part_row(f"intra {name}", getattr(codec.intra, name)) for name in ("encoder", "quantizer", "decoder")),
        f"| remembering decoder (decoder copy, projections of {codec.history} earlier frames) | | | "
        f"{num_params(codec.decoder):,} |", "",
    ]
    return _card(card_data, lines, sections, image)


EVALUATION_BEGIN, EVALUATION_END = "<!-- evaluation: compressor.tools.evaluate --card -->", "<!-- /evaluation -->"


def write_evaluation(folder: str | os.PathLike, model_name: str, markdown: str, results: list[EvalResult]) -> None:
    """Put an evaluation into the card (``README.md``) of a Hub folder: ``results`` as the card's ``model-index``
    (what the Hub shows as evaluation results) and ``markdown`` as its "Evaluation" section. A later evaluation
    replaces both, so the card shows one, the last."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} has no model card (README.md): not a folder that save_pretrained wrote")
    card = ModelCard.load(path)
    card.data.model_name, card.data.eval_results = model_name, results
    text = card.text
    if EVALUATION_BEGIN in text:  # the previous evaluation goes
        head, _, rest = text.partition(EVALUATION_BEGIN)
        text = head.rstrip() + "\n\n" + rest.partition(EVALUATION_END)[2].lstrip()
    section = markdown.strip().replace("\n## ", "\n### ")
    if section.startswith("## "):
        section = "#" + section
    text = f"{text.rstrip()}\n\n{EVALUATION_BEGIN}\n## Evaluation\n\n{section}\n{EVALUATION_END}\n"
    ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}").save(path)
