"""The Hub folder written at the end of training: ``save_pretrained`` plus what only the trainer knows.

``compressor.codec.hub`` writes the codec half of the card (mode, architecture, token budget); this module adds the
training data, the steps and images (or clips) seen, and the reconstruction check of ``ExportCallback``. Per-frame
and video training both write it through ``ExportCallback`` and ``core.export``.
"""

from __future__ import annotations

import os
import shutil

import pytorch_lightning as pl

from compressor.codec.hub import HubFolder

_MAX_LISTED = 12  # sources named in the card; a long list of shards says no more than its count and folder


def training_sections(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str]:
    """The card's "Training" section (title -> markdown), from the trainer and datamodule."""
    steps = trainer.global_step
    dm = trainer.datamodule
    batch_size = getattr(getattr(dm, "hparams", None), "batch_size", None)
    clip_len = getattr(getattr(dm, "hparams", None), "clip_len", None)  # video training reads clips, not frames
    seen = "clips" if clip_len else "images"
    lines = [f"- Data: {_data_sources(dm)}",
             f"- Steps: {steps:,}" + (f", {seen} seen: {steps * batch_size * trainer.world_size:,} "
                                      f"(batch {batch_size} x {trainer.world_size} devices)" if batch_size else "")
             + (f", of {clip_len} frames: an intra reference, then {clip_len - 1} conditional frames" if clip_len
                else ""),
             f"- Precision: {trainer.precision}"]
    if hasattr(pl_module, "train_seconds"):
        lines.append(f"- Training time: {pl_module.train_seconds() / 60:.1f} min")
    hp = getattr(pl_module, "hparams", {})
    if "intra" in hp:  # video training: the intra model is given and frozen
        lines.append(f"- Intra model: `{hp['intra']}`, frozen; only the conditional model trained")
    if "lr" in hp:
        lines.append(f"- Optimiser: AdamW, lr {hp['lr']:g}, EMA decay {hp.get('ema_decay')}; "
                     "the exported weights are the EMA")
    return {"Training": "\n".join(lines)}


def check_section(check: dict) -> str:
    """The card's "Check at export" section from ``core.export``'s check: ``{"psnr", "frames", "bytes_per_frame"}``.
    Not called "Evaluation": that heading is ``compressor.tools.evaluate --card``'s (``hub.write_evaluation``)."""
    return (f"PSNR {check['psnr']:.2f} dB on {check['frames']} validation frames at {check['bytes_per_frame']:g} "
            "bytes/frame, measured at the end of training through the codec API (encode -> pack -> unpack -> "
            "decode), as a user of this folder gets it. A few frames only: use `compressor.tools.evaluate` for "
            "numbers to compare.")


def _data_sources(dm) -> str:
    """Where the training frames came from, as far as the datamodule tells."""
    hp = getattr(dm, "hparams", None)
    if hp is None:
        return "unknown (no datamodule)"
    if hp.get("shards"):
        shards = getattr(dm, "train_shards", [])  # the clips datamodule does not keep its list
        names = ", ".join(os.path.basename(s) for s in shards[:_MAX_LISTED])
        more = f", ... ({len(shards)} in all)" if len(shards) > _MAX_LISTED else ""
        return f"frame shards in `{hp['shards']}`" + (f": {names}{more}" if names else "")
    if hp.get("videos"):
        videos = getattr(dm, "train_videos", [])
        names = ", ".join(os.path.basename(v) for v in videos[:_MAX_LISTED])
        more = f", ... ({len(videos)} in all)" if len(videos) > _MAX_LISTED else ""
        return f"{len(videos)} training videos from `{hp['videos']}`: {names}{more}"
    return "procedural driving-like scenes (`compressor.data.synthetic`), no real video"


def save_hub_folder(model: HubFolder, path: str, sections: dict[str, str], image_path: str | None = None) -> None:
    """``model.save_pretrained(path)`` (an ``Autoencoder`` or a ``VideoCodec``) with the card's training ``sections``
    and a copy of ``image_path``.

    Written to ``<path>.tmp`` and swapped in at the end, so a killed run leaves the previous folder or the new
    one, never a mix (``save_pretrained`` itself keeps an existing README, which would keep a stale card).
    """
    tmp, old = f"{path}.tmp", f"{path}.old"
    for leftover in (tmp, old):  # from a run killed during a previous export
        shutil.rmtree(leftover, ignore_errors=True)
    image = os.path.basename(image_path) if image_path else None
    if image_path:
        os.makedirs(tmp)
        shutil.copyfile(image_path, os.path.join(tmp, image))
    model.save_pretrained(tmp, model_card_kwargs={"sections": sections, "image": image})
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
