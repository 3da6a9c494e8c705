"""A decoder that remembers: per-frame tokens decoded with the tokens of the frames before them.

The per-frame model's tokens, their format and every stored latent stay as they are; only decoding improves
(``docs/video.md``). Trained by ``compressor.training.video.RememberModule``; saved as ``remembering.pt`` and a Hub
folder. ``RememberingCodec`` is what ``compressor.load`` returns for either: the per-frame model and the decoder, with
the clip API of every codec (``compressor.codec.clips``).
"""

from __future__ import annotations

import copy
import os

import torch
from torch import Tensor, nn

from compressor.codec.autoencoder import Autoencoder
from compressor.codec.checkpoint import CHECKPOINT_FORMAT, check_config, check_size, check_weights, read_checkpoint
from compressor.codec.clips import FrameCodec
from compressor.codec.hub import HubFolder, remembering_card
from compressor.codec.packing import check_tokens
from compressor.utils import to_uint8


class RememberingDecoder(nn.Module):
    """Per-frame tokens decoded with the tokens of up to ``history`` frames before them: the format, the encoder and
    every stored token stay as they are; only decoding improves.

    The intra model's decoder is copied and reads, beside the current frame's codes, each earlier frame's codes
    through its own projection. Those projections start at zero, so before training this decodes exactly as the
    per-frame decoder; a missing earlier frame (the first frame of a clip, a gap) contributes a learned "missing"
    vector instead, and training drops history at random so that every frame also decodes alone. Training fine-tunes
    the copied decoder (``post_quant`` and ``decoder``) with the projections; the quantizer, which says what a token
    means, stays frozen.

    Args:
        intra: the per-frame ``Autoencoder`` whose tokens are decoded (its decoder is copied, not shared).
        history: K, the earlier frames read.
    """

    def __init__(self, intra: Autoencoder, history: int = 2):
        super().__init__()
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.history = history
        self._intra_export = intra.export_dict()  # saved with it: the tokens it reads are that model's
        # Copies of a frozen intra model's parts would stay frozen: the decoder side is made trainable again
        # (it is fine-tuned with the projections), the token -> code map stays the intra model's.
        self.quantizer = copy.deepcopy(intra.quantizer).requires_grad_(False)
        self.post_quant = copy.deepcopy(intra.post_quant).requires_grad_(True)
        self.decoder = copy.deepcopy(intra.decoder).requires_grad_(True)
        self.grid, self.image_size = intra.grid, tuple(intra.image_size)
        self.num_tokens, self.codebook_size = intra.num_tokens, intra.codebook_size
        dim, code_dim = intra.post_quant.out_features, intra.post_quant.in_features
        self.past = nn.ModuleList([nn.Linear(code_dim, dim) for _ in range(history)])
        self.missing = nn.Parameter(torch.zeros(history, dim))
        for proj in self.past:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, tokens: Tensor, available: Tensor) -> Tensor:
        """tokens: int (B, 1 + K, N), the current frame first, then frames t-1 .. t-K; available: bool (B, K),
        whether each earlier frame exists -> recon float (B, 3, H, W)."""
        codes = self.quantizer.tokens_to_codes(tokens).to(self.post_quant.weight.dtype)  # (B, 1 + K, N, C)
        y = self.post_quant(codes[:, 0])
        for k, proj in enumerate(self.past):
            use = available[:, k, None, None]
            y = y + torch.where(use, proj(codes[:, k + 1]), self.missing[k].expand_as(y))
        return self.decoder(y, self.grid)

    @torch.no_grad()
    def decode_clip(self, tokens: Tensor) -> Tensor:
        """tokens: int (T, N) of consecutive frames -> uint8 (T, 3, H, W); frame t reads frames t-1 .. t-K of the
        clip where they exist."""
        tokens = check_tokens(tokens, self.num_tokens, self.codebook_size)
        T = len(tokens)
        past = [torch.roll(tokens, k, 0) for k in range(1, self.history + 1)]
        stacked = torch.stack([tokens, *past], 1)  # (T, 1 + K, N)
        available = torch.arange(T)[:, None] >= torch.arange(1, self.history + 1)[None]  # (T, K)
        return torch.cat([to_uint8(self.forward(stacked[i : i + 32], available[i : i + 32]))
                          for i in range(0, T, 32)])

    def export_dict(self) -> dict:
        return {"format": REMEMBERING_FORMAT, "history": self.history, "intra": self._intra_export,
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    def save(self, path: str | os.PathLike) -> None:
        torch.save(self.export_dict(), path)


REMEMBERING_FORMAT = "compressor-remembering/1"
MAX_HISTORY = 64  # earlier frames a remembering decoder reads


def load_remembering(path: str | os.PathLike) -> tuple[Autoencoder, RememberingDecoder]:
    """(the per-frame model whose tokens it decodes, the remembering decoder) from ``RememberingDecoder.save``."""
    codec = remembering_from_export(read_checkpoint(path), path)
    return codec.intra, codec.decoder


def remembering_from_export(blob, path: str | os.PathLike) -> "RememberingCodec":
    """A ``RememberingCodec`` from ``RememberingDecoder.export_dict()``: its size, intra model and weights checked."""
    if not isinstance(blob, dict) or blob.get("format") != REMEMBERING_FORMAT:
        raise ValueError(f"{path} is not a remembering decoder file (format {REMEMBERING_FORMAT!r})")
    try:
        check_size(blob.get("history"), "history", "its remembering decoder", MAX_HISTORY)  # a projection per frame
        intra = Autoencoder.from_export(blob.get("intra")).eval()
        decoder = RememberingDecoder(intra, blob["history"])
        check_weights(decoder, blob.get("state_dict"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    decoder.load_state_dict(blob["state_dict"])
    return RememberingCodec(intra, decoder.eval())


class RememberingCodec(nn.Module, HubFolder, library_name="compressor",
                       tags=["image-compression", "image-tokenizer", "dashcam"]):
    """A per-frame model's tokens decoded by a ``RememberingDecoder``: the clip API (``compressor.codec.clips``) of a
    per-frame codec (groups of one; every frame's tokens are the per-frame model's, of its one size, so shards, packing
    and the entropy coder take them as they are), whose ``decode_clip`` reads the frames before each frame.

    Saved as the decoder's ``remembering.pt`` (``save``) or a Hub folder (``save_pretrained``: ``config.json`` with
    the history and the intra model's config, ``model.safetensors`` under the prefixes ``intra.`` and ``decoder.``);
    ``compressor.load`` reads both.
    """

    FORMAT = REMEMBERING_FORMAT
    gop = 1
    supports_search = False  # a search fits tokens to the per-frame decoder, not to this one

    def __init__(self, intra: Autoencoder, decoder: RememberingDecoder):
        super().__init__()
        self.intra, self.decoder = intra, decoder
        self._frames = FrameCodec(intra)  # the per-frame side: tokens, their format and sizes

    history = property(lambda self: self.decoder.history)
    image_size = property(lambda self: self._frames.image_size)
    grid = property(lambda self: self._frames.grid)
    num_tokens = property(lambda self: self._frames.num_tokens)
    codebook_size = property(lambda self: self._frames.codebook_size)
    bits_per_token = property(lambda self: self._frames.bits_per_token)
    bytes_per_frame = property(lambda self: self._frames.bytes_per_frame)

    def frame_formats(self) -> dict[str, dict]:
        return self._frames.frame_formats()

    def parts(self) -> dict[str, nn.Module]:
        return {**self._frames.parts(), "remembering decoder": self.decoder}

    def encode_tokens(self, frames: Tensor, search_steps: int = 0) -> Tensor:
        """frames: uint8 (T, 3, H, W) -> the per-frame model's tokens, int64 (T, N): each frame coded alone."""
        return self._frames.encode_tokens(frames, search_steps)

    def encode_clip(self, frames: Tensor) -> tuple[list[Tensor], Tensor]:
        tokens = self.encode_tokens(frames)
        return list(tokens), self.decode_clip(tokens)

    def decode_clip(self, tokens: list[Tensor] | Tensor) -> Tensor:
        """Tokens of consecutive frames (a list of (N,), or (T, N)) -> uint8 (T, 3, H, W)."""
        tokens = tokens if isinstance(tokens, Tensor) else torch.stack(list(tokens))
        return self.decoder.decode_clip(tokens.to(self.decoder.missing.device))

    def save(self, path: str | os.PathLike) -> None:
        self.decoder.save(path)

    # ---- Hugging Face Hub folder ----------------------------------------------------------------------------------
    def hub_config(self) -> dict:
        return {"history": self.history, "intra": self.intra.export_config()}

    @classmethod
    def check_hub_config(cls, config: dict, overrides: dict, where: str) -> None:
        # The mixin passes config.json's intra back as a constructor argument; nothing may differ.
        if other := sorted(k for k, v in overrides.items() if v != config.get(k)):
            raise ValueError(f"{where} is a remembering decoder: {other} cannot be changed")
        check_size(config.get("history"), "history", where, MAX_HISTORY)
        check_config(config.get("intra"), f"{where}: intra")

    @classmethod
    def from_hub(cls, config: dict, state: dict, where: str, **overrides) -> "RememberingCodec":
        """The codec of a Hub folder, through ``remembering_from_export``: the checks of a ``remembering.pt``."""
        parts = {name: {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
                 for name in ("intra", "decoder")}
        if stray := [k for k in state if not k.startswith(("intra.", "decoder."))]:
            raise ValueError(f"{where}: not a compressor checkpoint: {stray[0]} belongs to neither part")
        intra = {"format": CHECKPOINT_FORMAT, "config": config["intra"], "state_dict": parts["intra"]}
        blob = {"format": REMEMBERING_FORMAT, "history": config["history"], "intra": intra,
                "state_dict": parts["decoder"]}
        return remembering_from_export(blob, where)

    def generate_model_card(self, sections: dict[str, str] | None = None, image: str | None = None):
        return remembering_card(self, self._hub_mixin_info.model_card_data, sections, image)
