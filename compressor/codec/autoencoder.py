"""The autoencoder: encoder -> quantizer -> decoder, with a training API and a codec API.

- Training API: ``forward(x)`` on float frames in [-1, 1] returns a dict (``recon``, ``codes``, ``tokens``,
  ``quant_loss``).
- Codec API: ``encode(frames) -> tokens`` and ``decode(tokens) -> frames`` on uint8, under ``no_grad``, with
  input checks. ``encode.py``, evaluation and the latent loader only use this API.
- Checkpoints: ``save``/``load`` of one ``.pt`` file, and the Hugging Face Hub folder (``save_pretrained`` /
  ``from_pretrained`` of ``compressor.codec.hub.HubFolder``: ``config.json`` + ``model.safetensors`` +
  ``README.md``). Both rebuild the parts from class paths that must lie in the codec modules, so loading never runs
  code from the file; what a file may hold, and how it is checked, is ``compressor.codec.checkpoint``.
"""

from __future__ import annotations

import os

import torch
from huggingface_hub import ModelCard
from torch import Tensor, nn

# Re-exported: the video codecs (compressor.codec.video) and the training modules import these from here.
from compressor.codec.checkpoint import (CHECKPOINT_FORMAT, build_part, check_arguments, check_config,  # noqa: F401
                                         check_size, check_weights, part_class, plain, read_checkpoint)
from compressor.codec.encoders import grid_size
from compressor.codec.hub import HubFolder, model_card
from compressor.codec.packing import check_tokens, token_bits
from compressor.utils import atomic_write, to_uint8, to_unit


# HubFolder gives save_pretrained / from_pretrained / push_to_hub (file layout, config.json, Hub download and upload,
# each read checked); the tags and library name go into the model card's YAML front matter.
class Autoencoder(nn.Module, HubFolder, library_name="compressor",
                  tags=["image-compression", "image-tokenizer", "dashcam"]):
    """Frames -> ``num_tokens`` discrete tokens -> frames.

    Args:
        encoder: maps (B, 3, H, W) in [-1, 1] to (B, N, D_enc); must expose ``dim`` and ``patch_size``.
        quantizer: maps (B, N, C) to codes and tokens; must expose ``dim`` and ``codebook_size``.
        decoder: maps (B, N, D_dec) and the token grid to (B, 3, H, W); must expose ``dim`` and ``patch_size``.
        image_size: (H, W) of the frames the codec accepts.
        max_bytes_per_frame: the token budget, asserted at construction. 224 bytes = 128 tokens x 14 bits.
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: nn.Module,
        image_size: tuple[int, int] = (128, 256),
        max_bytes_per_frame: int = 224,
    ):
        super().__init__()
        if encoder.patch_size != decoder.patch_size:
            raise ValueError(f"encoder patch {encoder.patch_size} != decoder patch {decoder.patch_size}")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.image_size = tuple(image_size)
        self.max_bytes_per_frame = max_bytes_per_frame
        self.grid = grid_size(self.image_size, encoder.patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.codebook_size = quantizer.codebook_size
        self.bits_per_token = token_bits(self.codebook_size)
        # The product promise: a frame fits in the byte budget. Fail at construction, not in a shard writer.
        bits = self.num_tokens * self.bits_per_token
        if bits > 8 * max_bytes_per_frame:
            raise ValueError(
                f"{self.num_tokens} tokens x {self.bits_per_token} bits = {bits} bits exceeds the budget of "
                f"{max_bytes_per_frame} bytes ({8 * max_bytes_per_frame} bits) per frame"
            )
        self.bytes_per_frame = -(-bits // 8)
        self.pre_quant = nn.Linear(encoder.dim, quantizer.dim)
        self.post_quant = nn.Linear(quantizer.dim, decoder.dim)

    # ---- training API -------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, 3, H, W) float in [-1, 1] -> recon (B, 3, H, W), codes (B, N, C), tokens (B, N), quant_loss."""
        grid = grid_size(tuple(x.shape[-2:]), self.encoder.patch_size)
        q = self.encode_to_codes(x)
        recon = self.decoder(self.post_quant(q["codes"].to(x.dtype)), grid)
        return {"recon": recon, "codes": q["codes"], "tokens": q["tokens"], "quant_loss": q["loss"]}

    def encode_to_codes(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, 3, H, W) float in [-1, 1] -> the quantizer's output: codes (B, N, C), tokens (B, N), loss.

        The one encode step (encoder -> pre_quant -> quantizer) that training, ``encode`` and the EMA calibration
        share."""
        return self.quantizer(self.pre_quant(self.encoder(x)))

    # ---- codec API ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: Tensor, search_steps: int = 0, search_lr: float = 0.15) -> Tensor:
        """frames: uint8 (B, 3, H, W) RGB at ``image_size`` -> tokens: int64 (B, num_tokens).

        ``search_steps > 0`` (FSQ quantizers only) then searches, frame by frame, for tokens that this model's
        decoder reconstructs better than the encoder's (``search_tokens``): same format, same bytes, same decoder,
        at the cost of ``search_steps`` decoder forward and backward passes.
        """
        self._check_frames(frames)
        x = to_unit(frames.to(self.pre_quant.weight.device))
        tokens = self.encode_to_codes(x)["tokens"]
        if search_steps > 0:
            tokens = self.search_tokens(x, tokens, search_steps, search_lr)
        # Checked here, before any caller casts them (to uint16 in a shard): NaN codes, from non-finite weights or
        # overflowing activations, come out of the quantizer as -2**63, which a cast would turn into a valid token.
        if tokens.dtype != torch.int64 or (tokens.numel() and (int(tokens.min()) < 0
                                                               or int(tokens.max()) >= self.codebook_size)):
            raise ValueError(f"the model gave tokens outside [0, {self.codebook_size}) (range [{int(tokens.min())}, "
                             f"{int(tokens.max())}], dtype {tokens.dtype}): its activations are not finite (a "
                             "diverged model?)")
        return tokens

    def search_tokens(self, x: Tensor, tokens: Tensor, steps: int, lr: float = 0.15) -> Tensor:
        """Tokens chosen for the frozen decoder: x float (B, 3, H, W) in [-1, 1], tokens (B, N) to start from ->
        tokens (B, N) whose decoded frames have the lowest squared error seen, per frame.

        The FSQ digits become free variables in level units; each step decodes their rounded values (a straight-
        through estimator carries the gradient through the rounding) and takes an Adam step on the squared error.
        Every step's forward pass decodes real tokens, so the best per frame is kept, and the start (the encoder's
        tokens) is among the candidates: the search never returns a frame worse than plain ``encode``.
        """
        q = self.quantizer
        if not hasattr(q, "_levels"):
            raise ValueError(f"token search needs an FSQ quantizer, not {type(q).__name__}")
        half = q._levels // 2
        low, high = -half, q._levels - 1 - half  # centred digits of each channel
        digits = (q.tokens_to_codes(tokens) * half).detach().requires_grad_(True)  # (B, N, C) in level units
        opt = torch.optim.Adam([digits], lr=lr)
        best, best_err = tokens.clone(), torch.full((len(x),), float("inf"), device=x.device)
        with torch.enable_grad():
            for step in range(steps + 1):
                bounded = torch.maximum(torch.minimum(digits, high), low)
                codes = (bounded + (bounded.round() - bounded).detach()) / half
                recon = self.decoder(self.post_quant(codes), self.grid)
                err = (recon.clamp(-1, 1) - x).pow(2).flatten(1).mean(1)  # (B,)
                better = err.detach() < best_err
                best[better] = q.codes_to_tokens(codes.detach()[better])
                best_err = torch.where(better, err.detach(), best_err)
                if step == steps:
                    break
                # Only the digits get gradients: the model's parameters stay untouched.
                (digits.grad,) = torch.autograd.grad(err.sum(), [digits])
                opt.step()
        return best

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """tokens: integer (B, num_tokens) in [0, codebook_size), any integer dtype (``tokens.npy`` holds uint16)
        -> frames: uint8 (B, 3, H, W)."""
        return to_uint8(self.reconstruct(tokens))

    @torch.no_grad()
    def reconstruct(self, tokens: Tensor) -> Tensor:
        """tokens: integer (B, num_tokens) -> float (B, 3, H, W) in [-1, 1], before ``decode`` rounds it to uint8
        (the reference a conditional frame of ``compressor.codec.video`` is coded against)."""
        tokens = self._check_tokens(tokens)
        codes = self.quantizer.tokens_to_codes(tokens.to(self.pre_quant.weight.device))
        return self.decoder(self.post_quant(codes), self.grid).clamp(-1, 1)

    def _check_frames(self, frames: Tensor) -> None:
        if not isinstance(frames, Tensor):
            raise ValueError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        expected = (3, *self.image_size)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"frames must have shape (B, {', '.join(map(str, expected))}), got {tuple(frames.shape)}; "
                "run compressor.preprocess on each decoded frame first"
            )

    def _check_tokens(self, tokens: Tensor) -> Tensor:
        return check_tokens(tokens, self.num_tokens, self.codebook_size)

    # ---- checkpoints --------------------------------------------------------------------------------------
    def export_config(self) -> dict:
        """Class paths and constructor arguments of the parts, plus the frame size and byte budget: plain JSON."""
        config = {"image_size": list(self.image_size), "max_bytes_per_frame": self.max_bytes_per_frame}
        for name in ("encoder", "quantizer", "decoder"):
            module = getattr(self, name)
            config[name] = {"class_path": f"{type(module).__module__}.{type(module).__name__}",
                            "init_args": plain(module.init_args)}
        return config

    def export_dict(self) -> dict:
        """Everything needed to rebuild the model: class paths, constructor arguments and weights (buffers too)."""
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        return {"format": CHECKPOINT_FORMAT, "config": self.export_config(), "state_dict": state}

    def save(self, path: str | os.PathLike) -> None:
        """Write an exported model that ``compressor.load`` reads; written atomically."""
        with atomic_write(path) as tmp:
            torch.save(self.export_dict(), tmp)

    @classmethod
    def from_export(cls, export: dict, **overrides) -> "Autoencoder":
        if not isinstance(export, dict) or export.get("format") != CHECKPOINT_FORMAT:
            fmt = export.get("format") if isinstance(export, dict) else type(export).__name__
            raise ValueError(f"not a compressor checkpoint (format {fmt!r})")
        config, state = export.get("config"), export.get("state_dict")
        if not (isinstance(config, dict) and isinstance(state, dict)
                and all(isinstance(v, Tensor) for v in state.values())):
            raise ValueError("not a compressor checkpoint (no config and state dict of tensors)")
        # The config's types and sizes first, then shapes on the meta device: a damaged or hostile config (a 2 KB
        # file asking for a 100 GB decoder, or for 100000 blocks) is refused before anything is built or allocated.
        check_config({**config, **overrides})
        with torch.device("meta"):
            skeleton = cls._from_config(config, overrides)
        check_weights(skeleton, state)
        model = cls._from_config(config, overrides)
        model.load_state_dict(state)
        return model.eval()

    # ---- Hugging Face Hub folder (save_pretrained / from_pretrained / push_to_hub: HubFolder) ----------------
    FORMAT = CHECKPOINT_FORMAT

    def hub_config(self) -> dict:
        return self.export_config()

    @classmethod
    def check_hub_config(cls, config: dict, overrides: dict, where: str) -> None:
        check_config({**config, **overrides}, where)

    @classmethod
    def from_hub(cls, config: dict, state: dict, where: str, **overrides) -> "Autoencoder":
        """The model of a Hub folder, through ``from_export``: the allow-list and the shape check apply exactly as
        for a ``.pt`` file."""
        return cls.from_export({"format": CHECKPOINT_FORMAT, "config": config, "state_dict": state}, **overrides)

    def generate_model_card(self, sections: dict[str, str] | None = None, image: str | None = None) -> ModelCard:
        """The ``README.md`` of a saved folder: architecture and token budget, plus ``sections`` (title -> markdown,
        e.g. training data and measured quality) and an ``image`` file name inside the folder."""
        return model_card(self, self._hub_mixin_info.model_card_data, sections, image)

    @classmethod
    def _from_config(cls, config: dict, overrides: dict) -> "Autoencoder":
        config = {**config, **overrides}
        try:
            parts = {name: build_part(config[name]) for name in ("encoder", "quantizer", "decoder")}
            return cls(**parts, image_size=tuple(config["image_size"]),
                       max_bytes_per_frame=config["max_bytes_per_frame"])
        except (KeyError, TypeError, AttributeError) as e:  # ValueErrors (budget, foreign class) say why already
            raise ValueError(f"not a compressor checkpoint: its config does not build a model "
                             f"({type(e).__name__}: {e})") from e


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides) -> Autoencoder:
    """Load a model from an exported ``.pt``, a Lightning ``.ckpt`` written by ``train.py``, or a Hub folder
    written by ``save_pretrained`` (``config.json`` + ``model.safetensors``), onto ``map_location``.

    Loading is weights-only (``torch.load(weights_only=True)``, safetensors): no pickled code runs. Overrides such as
    ``image_size=(256, 512), max_bytes_per_frame=896`` run the same weights on another token grid. Any other file
    raises ``ValueError`` ("not a compressor checkpoint"); a missing one ``FileNotFoundError``. A video codec
    (``video.pt`` or its folder) is refused with a pointer to ``compressor.load``, which reads either kind.
    """
    if os.path.isdir(path):
        return Autoencoder.from_pretrained(path, map_location=map_location, **overrides)
    blob = read_checkpoint(path)
    if isinstance(blob, dict) and str(blob.get("format", "")).startswith("compressor-video/"):
        raise ValueError(f"{path} is a video codec (intra and conditional frames), not a per-frame model: load it "
                         "with compressor.load, which returns a VideoCodec for it")
    # from_export copies the weights into a model built on the CPU, so the device is set here, as for a folder.
    return Autoencoder.from_export(blob, **overrides).to(map_location)
