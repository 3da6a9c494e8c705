"""The training core every LightningModule here shares: the EMA copy and its calibration, AdamW's parameter groups
and learning-rate schedule, and the export (the model file plus its Hub folder).

``CompressorModule`` (per-frame tokens) and the video modules (``VideoModule``, ``RememberModule``) differ in what
a step computes, not in how weights are averaged, decayed, scheduled or saved; each of those is defined here once.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any, Literal

import torch
import torchvision
from torch import nn

from compressor.codec.clips import clip_codec, clip_tokens, transmit
from compressor.codec.quantizers import Whitening
from compressor.codec.video import load_codec  # compressor.load: it tells per-frame and video models apart
from compressor.metrics import frame_psnr
from compressor.training.model_card import check_section, save_hub_folder
from compressor.utils import cosine, wsd

# Running statistics that belong to the weights producing their inputs, re-estimated for the EMA weights.
NORMS = (nn.modules.batchnorm._BatchNorm, Whitening)
# 2-D parameters that are vectors stacked in a matrix, not maps: decaying them would pull codes towards zero.
NOT_MATRICES = ("codebook", "missing")  # VQ's code vectors; RememberingDecoder's "no earlier frame" vectors


# ---- EMA ------------------------------------------------------------------------------------------------------
def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to average its weights into (no grads, so DDP and the optimizer ignore it)."""
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """Move ``ema``'s parameters towards ``model``'s, ``ema += (1 - d) (model - ema)``, and copy its buffers.

    ``d = min(decay, (1 + step) / (10 + step))``: the early-step ramp keeps the EMA from lagging behind a fresh model.
    Buffers (normalization statistics, VQ usage counts) are copied, not averaged; ``calibrate_ema`` refits the
    statistics to the EMA weights before they are used.
    """
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)  # one kernel launch per dtype
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


@torch.no_grad()
def calibrate_ema(ema: nn.Module, batches: Iterable[Any], encode: Callable[[Any], object], context=None) -> None:
    """Re-estimate ``ema``'s normalization statistics (BatchNorm, ``Whitening``) on its own outputs.

    ``update_ema`` copies the live model's buffers, but running statistics such as StandardizedFSQ's belong to the
    weights that produced them: on EMA weights that trail the live ones, the copied means sat up to half a standard
    deviation off centre (a 750-step run). As ``torch.optim.swa_utils.update_bn`` does for SWA, this recomputes them
    as a plain average (``momentum=None``) over ``batches``, running ``encode(batch)`` with only the normalization
    layers in train mode (a whole model in train mode would also restart the EMA copy's dead VQ codes). Each layer's
    momentum and mode are restored afterwards.

    Args:
        ema: the EMA model.
        batches: recent training inputs, each passed to ``encode``.
        encode: runs ``ema``'s encoder on one batch (e.g. ``lambda x: ema.encode_to_codes(x)``).
        context: the trainer's precision context, so the statistics are those of the precision it trains in.
    """
    norms = [m for m in ema.modules() if isinstance(m, NORMS)]
    batches = list(batches)
    if not norms or not batches:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
        m.train()
    with context or nullcontext():
        for batch in batches:
            encode(batch)
    for m, (momentum, training) in zip(norms, saved):
        m.momentum = momentum
        m.train(training)


# ---- optimisation ---------------------------------------------------------------------------------------------
def decays(name: str, p: nn.Parameter) -> bool:
    """Whether AdamW decays ``p``: matrices and kernels only, never norms, biases or codebooks."""
    return p.ndim >= 2 and name.rsplit(".", 1)[-1] not in NOT_MATRICES


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW's two groups of the trainable parameters in ``named``: decayed (``decays``) and not."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for the whole update, CPU or CUDA) where every parameter allows it, else foreach.

    Lightning moves the model to its device before ``configure_optimizers``, so the check sees the training device.
    """
    params = [p for g in groups for p in g["params"]]
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, ValueError):  # a build or dtype without a fused kernel
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def total_steps(trainer) -> int:
    """The run's optimizer steps (``trainer.max_steps``, else Lightning's estimate); the schedule needs a length."""
    total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError("set trainer.max_steps: the learning-rate schedule needs a known length")
    return int(total)


def lr_multiplier(total: int, warmup: int, floor: float, schedule: Literal["cosine", "wsd"] = "cosine",
                  cooldown_fraction: float = 0.2, progress: Callable[[], float] | None = None
                  ) -> Callable[[int], float]:
    """The ``LambdaLR`` multiplier: a linear warm-up, then a cosine or WSD decay to ``floor``.

    Args:
        total: optimizer steps in the run.
        warmup: linear warm-up steps.
        floor: the multiplier at the end (``min_lr_ratio``).
        schedule: ``"cosine"`` (half-cosine from the end of warm-up) or ``"wsd"`` (constant, then a linear cool-down
            over the last ``cooldown_fraction`` of the steps, counted from step 0 so it starts at a round step).
        cooldown_fraction: share of the steps in WSD's cool-down.
        progress: when given, the decay follows it (0 to 1, e.g. training time over a budget) instead of steps.
    """
    if schedule not in ("cosine", "wsd"):
        raise ValueError(f"schedule must be 'cosine' or 'wsd', not {schedule!r}")
    if not 0 <= cooldown_fraction <= 1:
        raise ValueError(f"cooldown_fraction must be in [0, 1], not {cooldown_fraction}")
    decay = (lambda p: wsd(p, cooldown_fraction, floor)) if schedule == "wsd" else (lambda p: cosine(p, floor))
    start = 0 if schedule == "wsd" else warmup

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = progress() if progress is not None else (step - start) / max(1, total - start)
        return decay(min(1.0, done))

    return multiplier


def optimizers(groups: list[dict], trainer, lr: float, betas: tuple[float, float], warmup: int, floor: float,
               **schedule) -> tuple[list, list]:
    """``configure_optimizers``' answer: ``adamw(groups)`` and its per-step ``lr_multiplier`` (``schedule``: the
    multiplier's keyword arguments)."""
    opt = adamw(groups, lr, tuple(betas))
    multiplier = lr_multiplier(total_steps(trainer), warmup, floor, **schedule)
    return [opt], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, multiplier), "interval": "step"}]


# ---- export ----------------------------------------------------------------------------------------------------
def export(model: nn.Module, out_dir: str, filename: str, sections: dict[str, str],
           frames: torch.Tensor | None = None) -> dict:
    """Write the model a user codes with, and check what was written: ``out_dir/filename`` (``model.save``) and,
    where the model has a Hub format (``save_pretrained``), the Hub folder ``out_dir/hub`` with the card's training
    ``sections``. Every codec's trainer exports through this (``callbacks.ExportCallback``).

    With check ``frames`` (uint8 (T, 3, H, W): validation frames, or one clip in order for a video codec), the
    frames are coded as a user codes them (``round_trip``: encode, pack, unpack, decode), every written copy (the
    file, the folder) is loaded back with ``compressor.load`` and must decode the same packed tokens to the same
    frames (within a grey level: float sums may run in another order), a ``recon.png`` (originals above,
    reconstructions below) goes beside the file and into the folder, and the PSNR and bytes go into the card.

    Returns ``{"path", "hub" (or None), "psnr", "frames", "bytes_per_frame", "image"}`` (the last four None unchecked).
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    model.save(path)
    result = {"path": path, "hub": None, "psnr": None, "frames": None, "bytes_per_frame": None, "image": None}
    tokens = None
    if frames is not None:
        tokens, recon, num_bytes = round_trip(model, frames)
        frames = frames.to(recon.device)
        result.update(psnr=frame_psnr(recon, frames).mean().item(), frames=len(frames),
                      bytes_per_frame=num_bytes / len(frames), image=os.path.join(out_dir, "recon.png"))
        grid = torch.cat([frames, recon], dim=2).cpu().float() / 255  # each column: original above, recon below
        torchvision.utils.save_image(grid, result["image"], nrow=min(4, len(frames)), padding=2)
        sections = {**sections, "Check at export": check_section(result)}
    if hasattr(model, "save_pretrained"):  # every codec here has a Hub format; a model of another kind may not
        result["hub"] = os.path.join(out_dir, "hub")
        save_hub_folder(model, result["hub"], sections, result["image"])
    if tokens is not None:
        for written in filter(None, (path, result["hub"])):
            check_copy(written, tokens, recon)
    return result


@torch.no_grad()
def round_trip(codec: nn.Module, frames: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """frames: uint8 (T, 3, H, W) -> (each frame's tokens as unpacked; the frames a user decodes from them, uint8
    (T, 3, H, W); the packed bytes), through the clip API (``compressor.codec.clips``) that every codec answers:
    the clip in order, each frame packed at its type's bits (``transmit``), decoded from what was unpacked."""
    clips = clip_codec(codec)
    frames = frames.to(next(clips.parameters()).device)
    back, sizes = transmit(clips, clip_tokens(clips, frames))
    return back, clips.decode_clip(back), sum(sizes)


@torch.no_grad()
def check_copy(path: str, tokens: list[torch.Tensor], recon: torch.Tensor) -> None:
    """``RuntimeError`` unless the model written to ``path`` (a file or a Hub folder), loaded with
    ``compressor.load``, decodes ``tokens`` to ``recon`` (what the trained model decoded) within a grey level."""
    again = clip_codec(load_codec(path, map_location=recon.device)).decode_clip(tokens)
    if again.shape != recon.shape or (again.int() - recon.int()).abs().max() > 1:
        raise RuntimeError(f"{path} does not decode the check frames' tokens as the trained model does: the export "
                           "is broken")
