"""The model card (``README.md``) of a Hub folder written by ``Autoencoder.save_pretrained``.

The card states what a user of the folder must know before trusting its tokens: the parts and their arguments, and
the token budget. Training and evaluation sections come from the caller (``compressor.training.model_card``), so
this module needs no Lightning.
"""

from __future__ import annotations

import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from compressor.utils import num_params


def model_card(model: nn.Module, card_data: ModelCardData, sections: dict[str, str] | None = None,
               image: str | None = None) -> ModelCard:
    """The card of ``model``, an ``Autoencoder`` (not imported: the autoencoder imports this module), with YAML
    front matter from ``card_data`` (library name, tags; no license is claimed), a usage snippet, the token budget,
    the architecture, then ``sections`` (title -> markdown) in order, and ``image`` (a file name inside the folder)
    at the end."""
    H, W = model.image_size
    gh, gw = model.grid
    lines = [
        "# compressor: dashcam frames to discrete tokens", "",
        f"A learned image codec: an RGB frame of {H}x{W} becomes {model.num_tokens} discrete tokens of "
        f"{model.bits_per_token} bits ({model.bytes_per_frame} bytes), and back.", "",
        "Mode: per-frame. Every frame is coded on its own, so any frame's tokens decode alone. (A video codec, "
        "`compressor.codec.video.VideoCodec`, codes groups of an intra frame and conditional frames instead; it is "
        "saved as its own `video.pt`, and `compressor.load` tells the two apart.)", "",
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
        "Loading rebuilds the parts from the class paths in `config.json`; only classes of the `compressor` codec "
        "modules are accepted, and the weights are read from `model.safetensors`, so no code from the folder runs.",
        "",
        "## Token budget", "",
        "| tokens | grid (H x W) | bits/token | bytes/frame | codebook size | budget |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {model.num_tokens} | {gh} x {gw} | {model.bits_per_token} | {model.bytes_per_frame} | "
        f"{model.codebook_size} | {model.max_bytes_per_frame} B |", "",
        "## Architecture", "",
        "| part | class | arguments | parameters |", "|---|---|---|---:|",
    ]
    for name in ("encoder", "quantizer", "decoder"):
        part = getattr(model, name)
        args = ", ".join(f"{k}={v}" for k, v in part.init_args.items())
        lines.append(f"| {name} | `{type(part).__module__}.{type(part).__name__}` | {args} | {num_params(part):,} |")
    lines += [f"| total (with the linear maps around the quantizer) | | | {num_params(model):,} |", ""]
    for title, body in (sections or {}).items():
        lines += [f"## {title}", "", body.rstrip(), ""]
    if image:
        lines += [f"![Originals above, reconstructions below]({image})", ""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


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
