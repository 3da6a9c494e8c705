"""Callbacks that turn a finished training run into artefacts: the exported model and a reconstruction check."""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
import torchvision

from compressor.metrics import frame_psnr
from compressor.packing import pack, unpack


class ExportCallback(pl.Callback):
    """At the end of fit, on rank 0: export the EMA model, save a reconstruction image, print PSNR and bytes.

    The reconstruction goes through the codec API and the bit packer (encode -> pack -> unpack -> decode), so
    the printed numbers are what a user of ``model.pt`` gets.

    Args:
        out_dir: where ``model.pt`` and ``recon.png`` go; defaults to the trainer's ``default_root_dir``.
        num_frames: validation frames in the check.
    """

    def __init__(self, out_dir: str | None = None, num_frames: int = 8):
        self.out_dir = out_dir
        self.num_frames = num_frames

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        out_dir = self.out_dir or trainer.default_root_dir
        os.makedirs(out_dir, exist_ok=True)
        model = pl_module.ema.eval()
        model_path = os.path.join(out_dir, "model.pt")
        model.save(model_path)

        loaders = trainer.datamodule.val_dataloader() if trainer.datamodule else []
        frames = _take(loaders, self.num_frames)
        if frames is None:
            print(f"saved {model_path} (no validation frames for a reconstruction check)")
            return
        frames = frames.to(pl_module.device)
        data = pack(model.encode(frames), bits=model.bits_per_token)
        recon = model.decode(unpack(data, len(frames), model.num_tokens, model.bits_per_token))
        psnr = frame_psnr(recon, frames).mean().item()
        image_path = os.path.join(out_dir, "recon.png")
        # Each column: original above, reconstruction below.
        grid = torch.cat([frames, recon], dim=2).cpu().float() / 255
        torchvision.utils.save_image(grid, image_path, nrow=min(4, len(frames)), padding=2)
        print(f"saved {model_path} and {image_path}")
        print(f"PSNR {psnr:.2f} dB on {len(frames)} validation frames at {len(data) // len(frames)} bytes/frame "
              f"({model.num_tokens} tokens x {model.bits_per_token} bits)")


def _take(loaders, n: int) -> torch.Tensor | None:
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        return None
    batches, count = [], 0
    for batch in loaders:
        batches.append(batch)
        count += len(batch)
        if count >= n:
            break
    return torch.cat(batches)[:n] if batches else None
