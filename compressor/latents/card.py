"""The dataset card: a ``README.md`` that makes an encoded latent folder self-describing.

``encode.py`` writes it beside ``manifest.json`` after every run, from the merged manifest (the single truth of
what the folder holds) and the model, atomically; so a resumed job rewrites it to describe every video, and a
killed one leaves the previous card or none, never half of one. It says which model made the tokens, how frames
were preprocessed, how tokens are laid out, the frame rates and counts, and how to read the tokens three ways:
``LatentDataset``, plain ``webdataset`` and Hugging Face ``datasets``. Its snippets are tested by running them.

It records the mode: per-frame tokens (every frame coded alone), or video-mode tokens of a ``VideoCodec`` (groups of
an intra frame and conditional frames, ``compressor.latents.groups``), with what a reader of each must know.
"""

from __future__ import annotations

import json
import os

from compressor.codec.autoencoder import Autoencoder, model_id
from compressor.codec.video import VideoCodec
from compressor.utils import atomic_write

CARD = "README.md"


def _rates(values: set[float]) -> str:
    return ", ".join(f"{v:g}" for v in sorted(values)) + " fps" if values else "none (no video decoded)"


def _videos_section(manifest: dict, segment_seconds: float | None) -> list[str]:
    videos, shards = manifest["videos"], manifest["shards"]
    by_status: dict[str, list[str]] = {}
    for rel, entry in sorted(videos.items()):
        by_status.setdefault(entry["status"], []).append(rel)
    decoded = [e for e in videos.values() if e["status"] != "failed"]
    source_fps = {round(float(e["source_fps"]), 3) for e in decoded if "source_fps" in e}
    fps = {round(float(e["fps"]), 3) for e in decoded if "fps" in e}
    resampled = any(abs(float(e["fps"]) - float(e["source_fps"])) > 1e-6 for e in decoded if "fps" in e)
    sizes: dict[str, int] = {}
    for e in decoded:
        if "original_size" in e:
            size = "x".join(map(str, e["original_size"]))
            sizes[size] = sizes.get(size, 0) + 1
    lines = ["## Contents", "", "| | |", "|---|---|",
             f"| videos | {len(videos)}: " + ", ".join(f"{len(v)} {s}" for s, v in sorted(by_status.items())) + " |",
             f"| frames | {sum(int(e.get('frames', 0)) for e in decoded)} |",
             f"| segments (samples) | {sum(int(s['samples']) for s in shards.values())} in {len(shards)} "
             f"shard{'s' * (len(shards) != 1)} "
             f"(`latents-*.tar`, {sum(int(s['bytes']) for s in shards.values())} bytes) |",
             f"| source frame rates | {_rates(source_fps)} |",
             f"| token frame rates | {_rates(fps)} ("
             + ("resampled by timestamp: the first frame at or after each tick" if resampled else "every decoded frame")
             + ") |"]
    if segment_seconds is not None:
        lines.append(f"| segment length | at most {segment_seconds:g} s of one video; a segment never spans videos |")
    lines.append(f"| original frame sizes (w x h) | "
                 + (", ".join(f"{k} ({n} videos)" for k, n in sorted(sizes.items())) or "none") + " |")
    lines.append(f"| inputs | {', '.join(f'`{i}`' for i in manifest.get('inputs', []))} |")
    problems = [(s, rel) for s in ("truncated", "failed") for rel in by_status.get(s, [])]
    if problems:
        lines += ["", "Inputs that failed (no tokens) or were truncated (tokens of the frames that decoded):", ""]
        lines += [f"- {s}: `{rel}`: {videos[rel].get('reason', '')}" for s, rel in problems]
    lines += ["", "`manifest.json` lists every video (status, frame count, shard) and every shard's sha256."]
    return lines


def _mode_section(model: Autoencoder | VideoCodec) -> list[str]:
    if not isinstance(model, VideoCodec):
        return ["## Mode", "", "Per-frame: every frame is coded on its own, so any frame's tokens decode alone "
                "(`compressor.load(MODEL).decode(tokens)`)."]
    f = model.frame_formats()
    return [
        "## Mode", "",
        f"Video: each segment is coded in groups of {model.gop} frames. Frame t of a segment is an intra frame (`I`, "
        f"coded alone) when t % {model.gop} == 0, else a conditional frame (`P`, coded given the reconstruction of "
        "the frame before it). Every segment starts with an intra frame, so it decodes alone, and so does any "
        "window that starts at one: `compressor.load(VIDEO_PT).decode_clip([frame tokens, ...])`. Each sample's "
        "json says it too: `mode` (\"video\"), `gop`, `frame_types` (one letter a frame, \"IPPP...\") and "
        "`frame_formats`:", "",
        "| frame type | tokens | grid (rows x columns) | codebook | bits/token | bytes/frame |",
        "|---|---:|---|---:|---:|---:|",
        *[f"| `{k}` | {v['num_tokens']} | {v['token_layout']} | {v['codebook_size']} | {v['bits_per_token']} | "
          f"{v['bytes_per_frame']} |" for k, v in f.items()], "",
        f"A full group costs {(f['I']['bytes_per_frame'] + (model.gop - 1) * f['P']['bytes_per_frame']) / model.gop:g}"
        " bytes a frame packed."]


def _model_section(model: Autoencoder | VideoCodec) -> list[str]:
    if isinstance(model, VideoCodec):  # the group, the intra model's configuration and the conditional model's
        config = model.export_config()
        rows = (f"uint16 (T, {model.num_tokens}), little-endian, frame t in row t; a `P` row holds its own "
                f"{model.inter.num_tokens} tokens first, then zeros")
        budget = "the bound of every token; Mode gives each frame type's codebook, bits and bytes."
        fields, what = "mode, gop, frame_types, frame_formats", "An intra frame"
    else:
        config = model.export_config()  # class paths and init_args: what rebuilds the model, minus weights
        rows = f"uint16 (T, {model.num_tokens}), little-endian, frame t in row t"
        budget = f"{model.bits_per_token} bits per token, {model.bytes_per_frame} bytes per frame packed."
        fields, what = "bits_per_token, bytes_per_frame", "A frame"
    h, w = model.grid
    ph, pw = model.image_size[0] // h, model.image_size[1] // w
    return [
        "## Model", "",
        f"Model id `{model_id(model)}`: a hash of the weights, also in every sample's json (`model_id`). Tokens of "
        "different model ids are different vocabularies: never mix them. Its configuration (class paths and "
        "constructor arguments; `compressor.load` rebuilds a model from these plus its weights):", "",
        "```json", "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in config.items()) + "\n}", "```",
        "",
        "## Preprocessing", "",
        f"Each decoded video frame is centre-cropped to the largest window of aspect ratio {model.image_size[1]}:"
        f"{model.image_size[0]} (whole pixels), area-resized (PIL's BOX filter) to {model.image_size[1]}x"
        f"{model.image_size[0]} RGB uint8, and encoded: `compressor.data.video.preprocess`, the one function that "
        "training, encoding and evaluation share.", "",
        "## Token layout", "",
        f"- {what} is {model.num_tokens} tokens on a grid of {h}x{w} (rows x columns) {ph}x{pw}-pixel patches, "
        f"stored row-major: token `n` is grid row `n // {w}`, column `n % {w}`.",
        f"- Codebook of {model.codebook_size} codes: {budget}",
        f"- `<key>.tokens.npy`: {rows}. `<key>.json`: "
        "source (path relative to the input root), segment, first_frame, frame_indices and timestamps (in the "
        "source video), fps, source_fps, original_size, model_id, codebook_size, token_layout, "
        f"{fields}, num_frames, num_tokens, tokens_crc32, meta_crc32.",
        "- `<key>.tokens.ctok` (only where encoded with `--entropy-code`): the same tokens entropy-coded; read them "
        "with `LatentDataset(..., prior=PRIOR_FILE)`.",
        *(["- commaVQ's layout holds per-frame tokens only: the commaVQ export refuses video-mode tokens."]
          if isinstance(model, VideoCodec) else []),
        f"- For commaVQ's layout, (T, {h}, {w}) per segment: `python -m compressor.tools.commavq --input "
        "FOLDER --output NPY_FOLDER`."]


def _readers_section(root: str, model: Autoencoder | VideoCodec) -> list[str]:
    # Each block is self-contained and leaves `segments`: {(source, segment): tokens (T, N)}; the card test runs them.
    r = json.dumps(root)
    if isinstance(model, VideoCodec):  # windows start at intra frames; whole segments straight from the shards
        first = [
            "from compressor.latents import LatentDataset, expand_urls, read_segments",
            "",
            f"root = {r}  # this folder",
            "# for training: item['tokens'] is int64 (16, N), a clip that starts at an intra frame (one per group);",
            "# item['frame_types'] ('IPPP...') and item['frame_tokens'] (T,) say which frames are intra and how many",
            "# tokens each holds",
            "clips = LatentDataset(root, seq_len=16, shuffle=True, seed=0)",
            "# whole segments (each starts at an intra frame): {(source, segment): int64 (T, N)}",
            "segments = {(s['meta']['source'], s['meta']['segment']): s['tokens'].numpy()",
            "            for url in expand_urls(root) for s in read_segments(url)}"]
    else:
        first = [
            "import numpy as np",
            "from compressor.latents import LatentDataset",
            "",
            f"root = {r}  # this folder",
            "# for training: item['tokens'] is int64 (16, N); windows never cross a segment",
            "windows = LatentDataset(root, seq_len=16, stride=8, shuffle=True, seed=0)",
            "# whole segments, one frame per item: {(source, segment): int64 (T, N)}",
            "segments = {}",
            "for item in LatentDataset(root, seq_len=1):",
            "    segments.setdefault((item['source'], item['segment']), []).append(item['tokens'][0].numpy())",
            "segments = {key: np.stack(frames) for key, frames in segments.items()}"]
    return [
        "## Reading the tokens", "",
        "With `LatentDataset` (verified reads: checksums, manifest, shard ends; windows for world models):", "",
        "```python", *first, "```", "",
        "With plain `webdataset` (no checks beyond the tar's own):", "",
        "```python",
        "import glob, io, json",
        "import numpy as np",
        "import webdataset as wds",
        "",
        f"root = {r}  # this folder",
        "segments = {}",
        "for sample in wds.WebDataset(sorted(glob.glob(f'{root}/latents-*.tar')), shardshuffle=False):",
        "    meta = json.loads(sample['json'])",
        "    segments[(meta['source'], meta['segment'])] = np.load(io.BytesIO(sample['tokens.npy']))  # uint16 (T, N)",
        "```", "",
        "With Hugging Face `datasets` (its `webdataset` loader decodes `.npy` and `.json` by extension):", "",
        "```python",
        "import numpy as np",
        "from datasets import load_dataset",
        "",
        f"root = {r}  # this folder",
        "# converted to Arrow in the Hugging Face cache once; streaming=True reads the tars in place instead",
        "ds = load_dataset('webdataset', data_files={'train': f'{root}/latents-*.tar'}, split='train')",
        "segments = {(row['json']['source'], row['json']['segment']): np.asarray(row['tokens.npy'], dtype=np.uint16)",
        "            for row in ds}  # uint16 (T, N)",
        "```"]


def render_card(manifest: dict, model: Autoencoder | VideoCodec, root: str,
                segment_seconds: float | None = None) -> str:
    """The card's markdown for a folder ``root`` whose merged manifest is ``manifest``."""
    n = len(manifest["videos"])
    if isinstance(model, VideoCodec):
        what = (f"frames are coded in groups of {model.gop} (video mode): an intra frame of "
                f"{model.intra.num_tokens} tokens, then conditional frames of {model.inter.num_tokens} tokens,")
    else:
        what = f"every frame is {model.num_tokens} discrete tokens of {model.bits_per_token} bits"
    lines = [f"# Token latents of {n} video{'s' * (n != 1)}", "",
             f"Written by `encode.py` (package `compressor`): {what} from compressor model `{model_id(model)}`, in "
             "webdataset shards of one sample per segment of one video. This card is rewritten from `manifest.json` "
             "whenever the encode job finishes, resumed runs included.", ""]
    lines += _mode_section(model) + [""]
    lines += _videos_section(manifest, segment_seconds) + [""]
    lines += _model_section(model) + [""]
    lines += _readers_section(os.path.abspath(root), model)
    return "\n".join(lines) + "\n"


def write_card(output: str, model: Autoencoder | VideoCodec, manifest: dict,
               segment_seconds: float | None = None) -> str:
    """Write ``output/README.md`` atomically from the merged ``manifest``; returns its path."""
    path = os.path.join(output, CARD)
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write(render_card(manifest, model, output, segment_seconds))
    return path
