"""Video tokens: a frame coded given the previous reconstruction (a causal "P-frame" codec).

A group of frames starts with an intra frame, coded by a per-frame ``Autoencoder`` on its own; every later frame of
the group is coded by ``ConditionalCodec`` given the reconstruction of the frame before it, which the decoder has
too. The encoder sees what the decoder will already know, so its tokens only need to say what changed; the decoder
blends, pixel by pixel, the previous reconstruction with what the tokens say, so a static scene can keep the detail
it already had.

A conditional frame may spend fewer tokens than an intra frame: ``merge`` adjacent tokens of the patch grid share
one code (1: 128 tokens, 2: 64, 4: 32 at 128x256 with 16-px patches).

A ``VideoCodec`` is saved as one ``video.pt`` (``save``) or as a Hub folder (``save_pretrained``); ``load_codec``
(``compressor.load``) reads either, and per-frame models too, telling them apart by their format.
"""

from __future__ import annotations

import os

import torch
from einops import rearrange
from huggingface_hub import ModelCard
from torch import Tensor, nn

from compressor.codec import video_legacy as legacy
from compressor.codec.autoencoder import Autoencoder, load
from compressor.codec.checkpoint import (CHECKPOINT_FORMAT, build_part, check_config, check_size, check_weights, plain,
                                         read_checkpoint)
from compressor.codec.hub import HubFolder, folder_config, video_card
from compressor.codec.layers import init_weights
from compressor.codec.packing import check_tokens, frame_types, token_bits
from compressor.codec.remember import REMEMBERING_FORMAT, RememberingCodec, remembering_from_export
from compressor.utils import atomic_write, to_uint8, to_unit


class ConditionalCodec(nn.Module):
    """Frame t -> tokens given the reconstruction of frame t-1 -> frame t, from parts chosen in YAML.

    The encoder reads the frame and the reference stacked (6 channels); ``merge`` adjacent cells of its grid share a
    token; the decoder reads the tokens and the reference and blends the reference in, pixel by pixel.

    Args:
        encoder: an encoder of ``compressor.codec.encoders`` with ``in_channels=6``: (B, 6, H, W) -> (B, N, D_enc).
        quantizer: an FSQ-family or VQ quantizer (``dim``, ``codebook_size``, ``tokens_to_codes``).
        decoder: a conditional decoder of ``compressor.codec.decoders`` (``ConditionalViTDecoder`` or
            ``ConditionalViTOverlapDecoder``, one per pixel head): (features (B, N, D_dec), reference, grid) -> frame.
        image_size: (H, W) of the frames.
        merge: horizontally adjacent grid cells that share one token (divides the grid width).
        max_bytes_per_frame: the token budget of a conditional frame, asserted at construction.
    """

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module,
                 image_size: tuple[int, int] = (128, 256), merge: int = 1, max_bytes_per_frame: int = 224):
        super().__init__()
        if getattr(encoder, "in_channels", 3) != 6:
            raise ValueError(f"the conditional encoder reads the frame and the reference stacked: in_channels=6, not "
                             f"{getattr(encoder, 'in_channels', 3)}")
        if not hasattr(decoder, "ref_embed"):
            raise ValueError(f"{type(decoder).__name__} reads no reference: use a conditional decoder "
                             "(ConditionalViTDecoder, ConditionalViTOverlapDecoder)")
        if encoder.patch_size != decoder.patch_size:
            raise ValueError(f"encoder patch {encoder.patch_size} != decoder patch {decoder.patch_size}")
        p = encoder.patch_size
        h, w = image_size
        if h % p or w % p or (w // p) % merge:
            raise ValueError(f"image {image_size} must tile into {p}-px cells, {merge} to a token across")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.image_size, self.patch_size, self.merge = tuple(image_size), p, merge
        self.max_bytes_per_frame = max_bytes_per_frame
        self.grid = (h // p, w // p)
        self.num_tokens = self.grid[0] * self.grid[1] // merge
        self.codebook_size = quantizer.codebook_size
        self.bits_per_token = token_bits(self.codebook_size)
        bits = self.num_tokens * self.bits_per_token
        if bits > 8 * max_bytes_per_frame:
            raise ValueError(f"{self.num_tokens} tokens x {self.bits_per_token} bits = {bits} bits exceeds the budget "
                             f"of {max_bytes_per_frame} bytes ({8 * max_bytes_per_frame} bits) per frame")
        self.bytes_per_frame = -(-bits // 8)
        self.pre_quant = nn.Linear(merge * encoder.dim, quantizer.dim)  # a token's merged cells, side by side
        self.post_quant = nn.Linear(quantizer.dim, merge * decoder.dim)
        init_weights(self.pre_quant)
        init_weights(self.post_quant)

    @torch.no_grad()
    def init_from(self, intra: nn.Module) -> None:
        """Start from a trained per-frame model whose parts are these parts' per-frame versions of the same sizes (the
        encoder's class reading 3 channels, the decoder's ``FRAME_DECODER``, the same quantizer): every weight of the
        frame's path is copied, the reference's paths stay at zero and the blend starts at 5% reference, so a
        conditional frame first decodes about as the intra model would. ``ValueError`` where the parts differ."""
        widen_encoder(self.encoder, intra.encoder)
        m = self.merge  # merged cells: their mean feeds the quantizer, and each cell gets the token's code back
        self.pre_quant.weight.copy_(torch.cat([intra.pre_quant.weight / m] * m, 1))
        self.pre_quant.bias.copy_(intra.pre_quant.bias)
        try:
            self.quantizer.load_state_dict(intra.quantizer.state_dict())
            self.post_quant.weight.copy_(torch.cat([intra.post_quant.weight] * m, 0))
        except RuntimeError as e:  # another quantizer
            raise ValueError(f"the intra model's quantizer does not fit this one: {e}") from None
        self.post_quant.bias.copy_(torch.cat([intra.post_quant.bias] * m, 0))
        self.decoder.init_from(intra.decoder)

    # ---- training API -------------------------------------------------------------------------------------
    def forward(self, x: Tensor, ref: Tensor) -> dict[str, Tensor]:
        """x, ref: (B, 3, H, W) float in [-1, 1] -> recon (B, 3, H, W), codes (B, n, C), tokens (B, n), quant_loss."""
        q = self.encode_to_codes(x, ref)
        return {"recon": self.decode_codes(q["codes"].to(x.dtype), ref), "codes": q["codes"],
                "tokens": q["tokens"], "quant_loss": q["loss"]}

    def encode_to_codes(self, x: Tensor, ref: Tensor) -> dict[str, Tensor]:
        """x, ref: (B, 3, H, W) -> the quantizer's output for (B, n) tokens."""
        z = self.encoder(torch.cat([x, ref.to(x.dtype)], 1))  # (B, N, D): the frame and the reference, 6 channels
        z = rearrange(z, "b (h w m) d -> b (h w) (m d)", h=self.grid[0], m=self.merge)  # (B, n, mD)
        return self.quantizer(self.pre_quant(z))

    def decode_codes(self, codes: Tensor, ref: Tensor) -> Tensor:
        """codes: (B, n, C), ref: (B, 3, H, W) -> recon (B, 3, H, W)."""
        y = rearrange(self.post_quant(codes), "b n (m d) -> b (n m) d", m=self.merge)  # (B, n, mD) -> (B, N, D)
        return self.decoder(y, ref, self.grid)

    # ---- checkpoints: the layout of Autoencoder's, plus merge --------------------------------------------------
    def export_config(self) -> dict:
        """The frame size, merge, budget, and the parts' class paths and arguments: plain JSON."""
        config = {"image_size": list(self.image_size), "merge": self.merge,
                  "max_bytes_per_frame": self.max_bytes_per_frame}
        for name in ("encoder", "quantizer", "decoder"):
            part = getattr(self, name)
            config[name] = {"class_path": f"{type(part).__module__}.{type(part).__name__}",
                            "init_args": plain(part.init_args)}
        return config

    def export_dict(self) -> dict:
        return {**self.export_config(),
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def check_config(cls, config, where: str = "its conditional model") -> None:
        """``ValueError`` unless ``config`` (``export_config``'s, or one written before the codec was composed of
        parts, converted) names codec parts with arguments of the declared types within bounds. Builds nothing."""
        config = legacy.upgrade_config(config, where)
        check_config(config, where)  # the per-frame model's check: image size, budget, the three parts
        check_size(config.get("merge"), "merge", where)

    @classmethod
    def from_export(cls, export, where: str = "its conditional model") -> "ConditionalCodec":
        """The codec ``export_dict`` gave (or an older file's, converted: ``legacy``). Its arguments' types and sizes
        are checked first, then the weights against a model built on the meta device, as ``Autoencoder.from_export``
        does: a hostile or damaged file is a ``ValueError`` before anything is allocated."""
        if not isinstance(export, dict):
            raise ValueError(f"not a compressor checkpoint: {where} is a {type(export).__name__}, not a dict")
        config = {k: v for k, v in export.items() if k != "state_dict"}
        cls.check_config(config, where)
        config, state = legacy.upgrade_config(config, where), legacy.upgrade_state(config, export.get("state_dict"))

        def build() -> ConditionalCodec:
            parts = {name: build_part(config[name]) for name in ("encoder", "quantizer", "decoder")}
            return cls(**parts, image_size=tuple(config["image_size"]), merge=config["merge"],
                       max_bytes_per_frame=config["max_bytes_per_frame"])

        try:
            with torch.device("meta"):
                skeleton = build()
        except (ValueError, TypeError, AttributeError, AssertionError, ZeroDivisionError) as e:  # parts that do not fit
            raise ValueError(f"not a compressor checkpoint: {where}: {e}") from None
        check_weights(skeleton, state)
        codec = build()
        codec.load_state_dict(state)
        return codec.eval()

    # ---- codec API ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: Tensor, ref: Tensor) -> Tensor:
        """frames: uint8 (B, 3, H, W); ref: float (B, 3, H, W), the previous reconstruction -> int64 (B, n)."""
        tokens = self.encode_to_codes(to_unit(frames, ref.dtype), ref)["tokens"]
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(f"the model gave tokens outside [0, {self.codebook_size}): a diverged model?")
        return tokens

    @torch.no_grad()
    def decode(self, tokens: Tensor, ref: Tensor) -> Tensor:
        """tokens: (B, n); ref: float (B, 3, H, W) -> the reconstruction, float (B, 3, H, W) in [-1, 1]."""
        tokens = check_tokens(tokens, self.num_tokens, self.codebook_size)
        return self.decode_codes(self.quantizer.tokens_to_codes(tokens).to(ref.dtype), ref).clamp(-1, 1)


@torch.no_grad()
def widen_encoder(encoder: nn.Module, frame_encoder: nn.Module) -> None:
    """Copy ``frame_encoder``'s weights (a per-frame encoder, 3 input channels) into ``encoder`` (the same class and
    arguments, reading more channels): the input layer's weights for the extra channels (the reference's) are zero,
    so ``encoder`` first encodes the frame as ``frame_encoder`` does, whatever the reference.

    Only the input layer differs in shape, and its input axis holds channels innermost, whether it is a linear map of
    patches (``(p q c)``, ``layers.patchify``) or a convolution (``(out, c, k, k)``)."""
    mine = {k: v for k, v in encoder.init_args.items() if k != "in_channels"}
    theirs = {k: v for k, v in frame_encoder.init_args.items() if k != "in_channels"}
    if type(encoder) is not type(frame_encoder) or mine != theirs:
        raise ValueError(f"the conditional encoder {type(encoder).__name__}({mine}) starts from a per-frame encoder "
                         f"of the same class and arguments, not {type(frame_encoder).__name__}({theirs})")
    c, wide = frame_encoder.in_channels, encoder.in_channels
    source, state = frame_encoder.state_dict(), {}
    for name, target in encoder.state_dict().items():
        w = source[name]
        if w.shape != target.shape:  # (out, K c, ...) -> (out, K, c, ...), zeros for the channels beyond c
            grown = target.new_zeros(target.shape[0], target.shape[1] // wide, wide, *target.shape[2:])
            grown[:, :, :c] = w.reshape(w.shape[0], w.shape[1] // c, c, *w.shape[2:])
            w = grown.reshape(target.shape)
        state[name] = w
    encoder.load_state_dict(state)


VIDEO_FORMAT = "compressor-video/1"
MAX_GOP = 1 << 16  # frames in a group: an intra frame every 36 minutes at 30 fps


# HubFolder: save_pretrained / from_pretrained / push_to_hub, as for the per-frame Autoencoder; config.json's format
# tells compressor.load which of the two a folder holds.
class VideoCodec(nn.Module, HubFolder, library_name="compressor",
                 tags=["video-compression", "video-tokenizer", "dashcam"]):
    """Groups of ``gop`` frames: an intra frame (``intra``, a per-frame ``Autoencoder``), then conditional frames.

    The reference of a conditional frame is the previous frame's decoded reconstruction in float, the same values on
    both sides, so encoder and decoder never disagree about it.

    Args:
        intra: the per-frame model of intra frames.
        inter: the conditional model of the other frames (the same frame size).
        gop: frames in a group; frame t of a clip is intra when t % gop == 0.
    """

    FORMAT = VIDEO_FORMAT

    def __init__(self, intra: nn.Module, inter: ConditionalCodec, gop: int = 8):
        super().__init__()
        if gop < 1:
            raise ValueError(f"gop must be >= 1, got {gop}")
        if tuple(intra.image_size) != inter.image_size:
            raise ValueError(f"intra model frames {intra.image_size} != conditional model frames {inter.image_size}")
        self.intra, self.inter, self.gop = intra, inter, gop

    # What the latent pipeline, the cards and evaluation read, as they read an ``Autoencoder``'s: a stored frame is a
    # row of ``intra.num_tokens`` tokens (a conditional frame's fill its first ``inter.num_tokens`` places).
    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.intra.image_size)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.intra.grid)

    @property
    def num_tokens(self) -> int:
        return max(self.intra.num_tokens, self.inter.num_tokens)

    @property
    def codebook_size(self) -> int:
        """The bound of every token of a clip: the larger of the two codebooks (both are the same when the
        conditional model started from the intra model)."""
        return max(self.intra.codebook_size, self.inter.codebook_size)

    def frame_formats(self) -> dict[str, dict]:
        """Per frame type, ``I`` (intra) and ``P`` (conditional): tokens, their grid, codebook, bits and bytes."""
        (gh, gw), (ih, iw) = self.intra.grid, self.inter.grid  # the conditional part may have another grid
        merged = f", a token per {self.inter.merge} adjacent cells across" if self.inter.merge > 1 else ""
        return {"I": {"num_tokens": self.intra.num_tokens, "token_layout": f"{gh}x{gw} row-major",
                      "codebook_size": self.intra.codebook_size, "bits_per_token": self.intra.bits_per_token,
                      "bytes_per_frame": self.intra.bytes_per_frame},
                "P": {"num_tokens": self.inter.num_tokens, "token_layout": f"{ih}x{iw // self.inter.merge} "
                      f"row-major{merged}", "codebook_size": self.inter.codebook_size,
                      "bits_per_token": self.inter.bits_per_token, "bytes_per_frame": self.inter.bytes_per_frame}}

    @torch.no_grad()
    def encode_clip(self, frames: Tensor) -> tuple[list[Tensor], Tensor]:
        """frames: uint8 (T, 3, H, W) of one clip in order -> (tokens of each frame, int64 (N) or (n); the
        reconstruction the decoder will produce, uint8 (T, 3, H, W)). Frame t is intra when t % gop == 0."""
        tokens, recons, ref = [], [], None
        frames = frames.to(self.intra.pre_quant.weight.device)
        for t, kind in enumerate(frame_types(len(frames), self.gop)):
            if kind == "I":
                tok = self.intra.encode(frames[t : t + 1])
                ref = self.intra.reconstruct(tok)
            else:
                tok = self.inter.encode(frames[t : t + 1], ref)
                ref = self.inter.decode(tok, ref)
            tokens.append(tok[0])
            recons.append(to_uint8(ref[0]))
        return tokens, torch.stack(recons)

    @torch.no_grad()
    def decode_clip(self, tokens: list[Tensor]) -> Tensor:
        """Tokens of a clip that starts at an intra frame, as ``encode_clip`` gives -> uint8 (T, 3, H, W)."""
        out, ref, device = [], None, self.intra.pre_quant.weight.device
        for tok, kind in zip(tokens, frame_types(len(tokens), self.gop)):
            tok = tok.unsqueeze(0).to(device)
            if kind == "I":
                ref = self.intra.reconstruct(tok)
            else:
                ref = self.inter.decode(tok, ref)
            out.append(to_uint8(ref[0]))
        return torch.stack(out)

    def export_config(self) -> dict:
        """The group and both models' configs (class paths and arguments, no weights): plain JSON."""
        return {"gop": self.gop, "intra": self.intra.export_config(), "inter": self.inter.export_config()}

    def export_dict(self) -> dict:
        return {"format": VIDEO_FORMAT, "gop": self.gop, "intra": self.intra.export_dict(),
                "inter": self.inter.export_dict()}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``video.pt``, which ``compressor.load`` reads; written atomically."""
        with atomic_write(path) as tmp:
            torch.save(self.export_dict(), tmp)

    # ---- Hugging Face Hub folder: config.json holds what video.pt holds but the weights, which go to
    # model.safetensors under the prefixes intra. and inter. (this module's state dict) ---------------------------
    def hub_config(self) -> dict:
        return self.export_config()

    @classmethod
    def check_hub_config(cls, config: dict, overrides: dict, where: str) -> None:
        # The mixin passes config.json's intra and inter back as constructor arguments; only gop may differ.
        if other := sorted(k for k, v in overrides.items() if k != "gop" and v != config.get(k)):
            raise ValueError(f"{where} is a video codec: {other} apply to per-frame models only (gop=... applies)")
        check_size(overrides.get("gop", config.get("gop")), "gop", where, MAX_GOP)
        check_config(config.get("intra"), f"{where}: intra")
        ConditionalCodec.check_config(config.get("inter"), f"{where}: inter")

    @classmethod
    def from_hub(cls, config: dict, state: dict, where: str, **overrides) -> "VideoCodec":
        """The codec of a Hub folder, through ``video_from_export``: the checks of a ``video.pt`` apply."""
        parts = {name: {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
                 for name in ("intra", "inter")}
        if stray := [k for k in state if not k.startswith(("intra.", "inter."))]:
            raise ValueError(f"{where}: not a compressor checkpoint: its weights do not match its config ({stray[0]} "
                             "belongs to neither the intra nor the conditional model)")
        blob = {"format": VIDEO_FORMAT, "gop": config["gop"],
                "intra": {"format": CHECKPOINT_FORMAT, "config": config["intra"], "state_dict": parts["intra"]},
                "inter": {**config["inter"], "state_dict": parts["inter"]}}
        return video_from_export(blob, where, overrides.get("gop"))

    def generate_model_card(self, sections: dict[str, str] | None = None, image: str | None = None) -> ModelCard:
        """The ``README.md`` of a saved folder: the mode, the frame types and their budgets, both parts, plus
        ``sections`` (title -> markdown) and an ``image`` file name inside the folder."""
        return video_card(self, self._hub_mixin_info.model_card_data, sections, image)


def load_video(path: str | os.PathLike, gop: int | None = None) -> VideoCodec:
    """A ``VideoCodec`` from ``VideoCodec.save``'s file (weights-only load); ``gop`` overrides the saved group."""
    return video_from_export(read_checkpoint(path), path, gop)


def video_from_export(blob, path: str | os.PathLike, gop: int | None = None) -> VideoCodec:
    if not isinstance(blob, dict) or blob.get("format") != VIDEO_FORMAT:
        raise ValueError(f"{path} is not a video codec file (format {VIDEO_FORMAT!r})")
    gop = blob.get("gop") if gop is None else gop
    try:
        check_size(gop, "gop", "its video codec", MAX_GOP)
        intra = Autoencoder.from_export(blob.get("intra")).eval()
        inter = ConditionalCodec.from_export(blob.get("inter"))
        return VideoCodec(intra, inter, gop).eval()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_codec(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               **overrides) -> Autoencoder | VideoCodec | RememberingCodec:
    """The codec a file or Hub folder holds, so that callers need no flag for the mode: a ``VideoCodec`` for a video
    codec (``video.pt``, or a folder whose ``config.json`` has its format), a ``RememberingCodec`` for a decoder that
    remembers (``remembering.pt`` or its folder), else the per-frame ``Autoencoder`` that
    ``autoencoder.load`` reads (``.pt``, ``.ckpt``, Hub folder; ``overrides`` go to it). This is
    ``compressor.load``."""
    folder = os.path.isdir(path)
    # What says the mode: a folder's config.json (checked: a regular file of a bounded size holding a JSON object),
    # or a file's weights-only data.
    source = folder_config(path) if folder else read_checkpoint(path)
    if isinstance(source, dict) and source.get("format") == REMEMBERING_FORMAT:  # per-frame tokens, decoded with memory
        if overrides:
            raise ValueError(f"{path} is a remembering decoder: {sorted(overrides)} cannot be changed")
        codec = RememberingCodec.from_pretrained(path) if folder else remembering_from_export(source, path)
        return codec.to(map_location)
    if not (isinstance(source, dict) and source.get("format") == VIDEO_FORMAT):
        if folder:
            return load(path, map_location, **overrides)
        return Autoencoder.from_export(source, **overrides).to(map_location)
    if overrides:
        raise ValueError(f"{path} is a video codec: {sorted(overrides)} apply to per-frame models only")
    if folder:
        return VideoCodec.from_pretrained(path, map_location=map_location)
    return video_from_export(source, path).to(map_location)
