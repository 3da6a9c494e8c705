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

import json
import os
import re
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, PyTorchModelHubMixin, constants, hf_hub_download
from huggingface_hub.repocard_data import eval_results_to_model_index
from huggingface_hub.utils import yaml_dump
from torch import Tensor, nn

from compressor.utils import atomic_write, load_json, num_params, open_checked

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
# Opens each evaluation's section inside the block, with its key as JSON: [dataset, split, search steps].
_SECTION = re.compile(r"^<!-- evaluation of (\[.*\]) -->\n", re.MULTILINE)


def _section(key: tuple[str, str | None, int], markdown: str, level: int) -> str:
    """An evaluation's section: a "###" heading naming ``key``, then ``markdown`` with its level-``level`` headings
    moved down to "####", under it."""
    dataset, split, search_steps = key
    heading = f"### {dataset}, {split or 'all'} clips" + (f", {search_steps} search steps" if search_steps else "")
    return heading + "\n\n" + re.sub(f"^{'#' * level} ", "#### ", markdown.strip(), flags=re.MULTILINE)


def _old_key(markdown: str, results: list[EvalResult]) -> tuple[str, str | None, int] | None:
    """The key of an evaluation written when a card held one (its section has no key): the dataset and split that
    its model-index names, no search. None when that is not certain: the results name no or several datasets, or
    its command searched tokens (its task name did not say so, so its results would pass for a plain evaluation's)."""
    pairs = {(r.dataset_name, r.dataset_split) for r in results}
    searched = re.search(r"--search-steps[= ]'?([0-9]+)", markdown)
    if len(pairs) != 1 or (searched and int(searched[1])):
        return None
    return (*pairs.pop(), 0)


def write_evaluation(folder: str | os.PathLike, model_name: str, markdown: str, results: list[EvalResult],
                     dataset: str, split: str | None, search_steps: int = 0) -> None:
    """Put an evaluation into the card (``README.md``) of a Hub folder: ``results`` into the card's ``model-index``
    (what the Hub shows as evaluation results) and ``markdown`` as a section of its "Evaluation", headed by the
    evaluation's key (``dataset``, ``split``, ``search_steps``).

    A card holds one evaluation per key: a later one of the same key replaces its section and the model-index
    results with the same (dataset name, split, task name), so ``results`` must name the search in their task name
    (``eval_report.card_results``); the others are kept. Sections, and model-index entries, are sorted by key
    (dataset, split with all clips first, search steps or task name), so writing one does not move the rest.

    A card written when it held a single evaluation (no key in its section) keeps it under the key its model-index
    names, with no search, when that is certain (``_old_key``); otherwise that evaluation, section and results,
    goes, since nothing tells what it measured.
    """
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} has no model card (README.md): not a folder that save_pretrained wrote")
    card = ModelCard.load(path)
    text, old_results = card.text, card.data.eval_results or []
    sections: dict[tuple, str] = {}  # key -> its section
    if EVALUATION_BEGIN in text:  # the block comes out; its sections go back in at the end
        head, _, rest = text.partition(EVALUATION_BEGIN)
        block, _, tail = rest.partition(EVALUATION_END)
        text = head.rstrip() + "\n\n" + tail.lstrip()
        before, *parts = _SECTION.split(block)
        sections = {tuple(load_json(k)): s.strip() for k, s in zip(parts[::2], parts[1::2])}
        old = before.strip().removeprefix("## Evaluation").strip()
        if old and not sections:  # the single section of an older card, its headings already at "###"
            if (key := _old_key(old, old_results)) is None:
                old_results = []
            else:
                sections[key] = _section(key, old, 3)
    key = (dataset, split, search_steps)
    sections[key] = _section(key, markdown, 2)
    def result_key(r: EvalResult) -> tuple:
        return r.dataset_name, r.dataset_split, r.task_name

    replaced = {result_key(r) for r in results}
    groups: dict[tuple, list[EvalResult]] = {}  # result key -> its results (metrics)
    for r in [r for r in old_results if result_key(r) not in replaced] + list(results):
        groups.setdefault(result_key(r), []).append(r)
    # huggingface_hub's own model-index groups results by task type and dataset type, config, split and revision,
    # not by task name, so it would file a searched evaluation's numbers under the plain one's entry: each group is
    # made an entry of its own here, and the card is written without ModelCard (whose save regroups).
    entries = [entry for k in sorted(groups, key=lambda k: (k[0], k[1] or "", k[2] or ""))
               for entry in eval_results_to_model_index(model_name, groups[k])[0]["results"]]
    card.data.model_name, card.data.eval_results = None, None
    meta = {**card.data.to_dict(), "model-index": [{"name": model_name, "results": entries}]}
    order = sorted(sections, key=lambda k: (k[0], k[1] or "", k[2]))  # split None: all clips
    body = "\n\n".join(f"<!-- evaluation of {json.dumps(list(k))} -->\n{sections[k]}" for k in order)
    text = f"{text.rstrip()}\n\n{EVALUATION_BEGIN}\n## Evaluation\n\n{body}\n{EVALUATION_END}\n"
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(f"---\n{yaml_dump(meta, sort_keys=False).strip()}\n---\n{text}")
