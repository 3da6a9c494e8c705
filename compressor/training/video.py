"""LightningModule that trains the conditional codec of video tokens (``compressor.codec.video``) on clips.

How the previous reconstruction is produced during training: the first frame of each clip is coded by the frozen
intra model (a trained per-frame ``Autoencoder``), and each later frame is coded against the conditional model's
own reconstruction of the frame before it, detached. So training sees the references it will see when coding a
group (its own output, whatever errors it has), not clean frames or intra reconstructions only, while a step
costs one forward and backward pass per conditional frame (no back-propagation through time).
"""

from __future__ import annotations

import copy
from collections import deque

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from compressor.codec import video_legacy as legacy
from compressor.codec.autoencoder import load
from compressor.codec.remember import RememberingCodec, RememberingDecoder
from compressor.codec.video import ConditionalCodec, VideoCodec
from compressor.metrics import model_psnr
from compressor.training.losses import ReconstructionLoss
from compressor.training.core import calibrate_ema, ema_copy, optimizers, param_groups, update_ema
from compressor.utils import to_unit


class VideoModule(pl.LightningModule):
    """Trains ``ConditionalCodec`` on uint8 clips (B, L, 3, H, W) against a frozen intra model.

    Args:
        intra: path of the per-frame model (``model.pt``, a ``.ckpt`` or a Hub folder) that codes intra frames.
        encoder: the conditional encoder, an encoder of ``compressor.codec.encoders`` with ``in_channels: 6`` (it
            reads the frame and the reference).
        quantizer: the conditional frames' quantizer.
        decoder: the conditional decoder, ``ConditionalViTDecoder`` or ``ConditionalViTOverlapDecoder`` (one per
            pixel head; ``motion: true`` moves the reference before the blend).
        merge: grid cells per conditional token (1: 128 tokens at 128x256, 2: 64, 4: 32).
        image_size: (H, W) (linked to ``data.image_size``).
        max_bytes_per_frame: the conditional frame's token budget, asserted by the codec.
        gop: frames in a group of the exported ``VideoCodec`` (``encode.py --gop`` changes it later).
        loss: the reconstruction objective.
        lr: peak learning rate; warm-up then a cosine to ``lr * min_lr_ratio``.
        warmup_steps, min_lr_ratio, weight_decay, grad_clip, ema_decay: as in ``CompressorModule``.
        calibration_batches: recent batches on which the EMA copy's quantizer statistics are re-estimated.
        init_from_intra: start the conditional codec from the intra model's weights (``ConditionalCodec.init_from``:
            the parts must be the per-frame parts' conditional versions, of the same sizes, with the same quantizer),
            so that conditional frames start at intra quality.
    """

    def __init__(self, intra: str, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module, merge: int = 1,
                 image_size: tuple[int, int] = (128, 256), max_bytes_per_frame: int = 224, gop: int = 8,
                 loss: ReconstructionLoss | None = None, lr: float = 1e-3, warmup_steps: int = 200,
                 min_lr_ratio: float = 0.05, weight_decay: float = 0.05, grad_clip: float = 1.0,
                 ema_decay: float = 0.999, calibration_batches: int = 8, init_from_intra: bool = True):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "quantizer", "decoder", "loss"])
        self.intra = load(intra).eval().requires_grad_(False)
        self.codec = ConditionalCodec(encoder, quantizer, decoder, image_size, merge, max_bytes_per_frame)
        if init_from_intra:
            try:
                self.codec.init_from(self.intra)
            except ValueError as e:  # other parts, sizes or quantizer than the intra model's
                raise ValueError(f"init_from_intra needs the conditional parts built like the intra model {intra}'s "
                                 f"(its encoder's class reading 6 channels, its decoder's conditional version, the "
                                 f"same sizes and quantizer); set them to match or init_from_intra false: {e}") from e
        self.ema = ema_copy(self.codec)
        self.loss = loss or ReconstructionLoss()
        self._recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=calibration_batches)

    def train(self, mode: bool = True):
        super().train(mode)
        self.intra.eval()  # frozen: its normalization statistics never move
        return self

    @torch.no_grad()
    def intra_reference(self, frames: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> the intra model's reconstruction, float (B, 3, H, W), as a decoder gets it."""
        with torch.autocast(frames.device.type, enabled=False):
            return self.intra.reconstruct(self.intra.encode(frames))

    def run_clip(self, codec: ConditionalCodec, clips: Tensor) -> tuple[Tensor, list[Tensor], list[dict]]:
        """clips: uint8 (B, L, 3, H, W) -> (mean loss over conditional frames, PSNR per frame (B,) for t = 1..L-1,
        the loss terms per frame)."""
        x = to_unit(clips)
        ref = self.intra_reference(clips[:, 0])
        total, psnrs, terms_all = 0.0, [], []
        for t in range(1, clips.shape[1]):
            out = codec(x[:, t], ref)
            terms = self.loss(out["recon"], x[:, t])
            total = total + terms["loss"] + out["quant_loss"]
            ref = out["recon"].detach().float().clamp(-1, 1)
            if codec is self.codec and self.training:
                self._recent.append((x[:, t].detach(), ref))
            psnrs.append(model_psnr(ref, x[:, t]).detach())
            terms_all.append(terms)
        return total / (clips.shape[1] - 1), psnrs, terms_all

    def training_step(self, clips: Tensor, batch_idx: int) -> Tensor:
        loss, psnrs, _ = self.run_clip(self.codec, clips)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(clips))
        self.log("train/psnr", torch.cat(psnrs).mean(), prog_bar=True, batch_size=len(clips))
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        pl.LightningModule.optimizer_step(self, *args, **kwargs)  # not super(): RememberModule borrows this method
        update_ema(self.ema, self.codec, self.global_step, self.hparams.ema_decay)  # after each optimizer step

    def calibrate_ema(self) -> None:
        """The EMA copy's quantizer statistics, re-estimated on its own encoder outputs (``core.calibrate_ema``)."""
        context = self.trainer.precision_plugin.forward_context() if self._trainer is not None else None
        calibrate_ema(self.ema, self._recent, lambda pair: self.ema.encode_to_codes(*pair), context)

    def on_validation_epoch_start(self) -> None:
        self.calibrate_ema()

    def validation_step(self, clips: Tensor, batch_idx: int) -> None:
        loss, psnrs, _ = self.run_clip(self.ema, clips)
        self.log("val/loss", loss, batch_size=len(clips), sync_dist=True)
        self.log("val/psnr", torch.cat(psnrs).mean(), prog_bar=True, batch_size=len(clips), sync_dist=True)
        with torch.no_grad():
            x0 = to_unit(clips[:, 0])
            self.log("val/intra_psnr", model_psnr(self.intra_reference(clips[:, 0]), x0).mean(),
                     batch_size=len(clips), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        return optimizers(param_groups(self.codec.named_parameters(), hp.weight_decay), self.trainer, hp.lr,
                          (0.9, 0.95), hp.warmup_steps, hp.min_lr_ratio)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        torch.nn.utils.clip_grad_norm_(self.codec.parameters(), self.hparams.grad_clip)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.calibrate_ema()
        checkpoint["compressor_video"] = self.video_codec().export_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A run saved before the conditional codec was composed of parts resumes with its weights renamed.
        state = checkpoint.get("state_dict", {})
        for prefix in ("codec.", "ema."):
            if f"{prefix}enc_embed.weight" in state:
                old = {k.removeprefix(prefix): state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
                legacy_config = {"init_args": {"patch_size": self.codec.patch_size}}
                state.update({prefix + k: v for k, v in legacy.upgrade_state(legacy_config, old).items()})

    def exported(self) -> tuple[VideoCodec, str]:
        """What a user codes with (``ExportCallback``): the intra model and the calibrated EMA conditional model, as
        ``video.pt``."""
        self.calibrate_ema()
        return self.video_codec(), "video.pt"

    def video_codec(self) -> VideoCodec:
        """The codec a user runs: the intra model and the EMA conditional model (copies), in groups of ``gop``."""
        return VideoCodec(copy.deepcopy(self.intra), copy.deepcopy(self.ema).eval(), self.hparams.gop)


class RememberModule(pl.LightningModule):
    """Trains a ``RememberingDecoder`` on clips (B, 1 + K, 3, H, W) whose last frame is decoded; the per-frame
    model's encoder is frozen, so its tokens, and every stored latent, stay valid.

    Args:
        intra: path of the per-frame model whose tokens are decoded.
        history: K, earlier frames read (``data.clip_len`` must be K + 1).
        keep_history: chance that a sample sees all K earlier frames; otherwise it sees a random shorter prefix
            (0 .. K-1 of them), as the first frames of a clip do. 0 trains the same decoder without memory: the
            control that tells memory from extra training.
        image_size, loss, lr, warmup_steps, min_lr_ratio, weight_decay, grad_clip, ema_decay: as ``VideoModule``.
    """

    def __init__(self, intra: str, history: int = 2, keep_history: float = 0.7,
                 image_size: tuple[int, int] = (128, 256), loss: ReconstructionLoss | None = None, lr: float = 3e-4,
                 warmup_steps: int = 50, min_lr_ratio: float = 0.05, weight_decay: float = 0.05,
                 grad_clip: float = 1.0, ema_decay: float = 0.999):
        super().__init__()
        self.save_hyperparameters(ignore=["loss"])
        self.intra = load(intra).eval().requires_grad_(False)
        # in train mode: its parts are copies of the intra model's, in eval mode, and Lightning keeps modes as they are
        self.codec = RememberingDecoder(self.intra, history).train()
        self.ema = ema_copy(self.codec)
        self.loss = loss or ReconstructionLoss()

    def train(self, mode: bool = True):
        super().train(mode)
        self.intra.eval()
        return self

    def _batch(self, clips: Tensor, keep: float) -> tuple[Tensor, Tensor, Tensor]:
        """clips uint8 (B, 1 + K, 3, H, W), oldest first -> tokens (B, 1 + K, N) newest first, available (B, K),
        the target x (B, 3, H, W) in [-1, 1]."""
        B, L = clips.shape[:2]
        with torch.no_grad(), torch.autocast(clips.device.type, enabled=False):
            tokens = self.intra.encode(clips.flatten(0, 1)).view(B, L, -1).flip(1)
        K = L - 1
        seen = torch.where(torch.rand(B, device=clips.device) < keep, K,
                           torch.randint(0, max(K, 1), (B,), device=clips.device))
        available = torch.arange(K, device=clips.device)[None] < seen[:, None]
        return tokens, available, to_unit(clips[:, -1])

    def training_step(self, clips: Tensor, batch_idx: int) -> Tensor:
        tokens, available, x = self._batch(clips, self.hparams.keep_history)
        recon = self.codec(tokens, available)
        terms = self.loss(recon, x)
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, batch_size=len(clips))
        self.log("train/psnr", model_psnr(recon.detach().float(), x).mean(), prog_bar=True, batch_size=len(clips))
        return terms["loss"]

    def validation_step(self, clips: Tensor, batch_idx: int) -> None:
        tokens, available, x = self._batch(clips, 1.0 if self.hparams.keep_history > 0 else 0.0)
        self.log("val/psnr", model_psnr(self.ema(tokens, available).float(), x).mean(), prog_bar=True,
                 batch_size=len(clips), sync_dist=True)

    optimizer_step = VideoModule.optimizer_step  # the same EMA of self.codec, optimizer and clipping
    configure_optimizers = VideoModule.configure_optimizers
    configure_gradient_clipping = VideoModule.configure_gradient_clipping

    def exported(self) -> tuple[RememberingCodec, str]:
        """What a user codes with (``ExportCallback``): the intra model and the EMA decoder (copies), as
        ``remembering.pt`` and a Hub folder; nothing to calibrate, since its quantizer is the intra model's, frozen."""
        return RememberingCodec(copy.deepcopy(self.intra), copy.deepcopy(self.ema).eval()), "remembering.pt"
