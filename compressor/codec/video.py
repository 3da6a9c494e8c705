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
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import ModelCard
from torch import Tensor, nn

from compressor.codec.autoencoder import (CHECKPOINT_FORMAT, Autoencoder, build_part, check_arguments, check_config,
                                          check_size, check_weights, load, part_class, read_checkpoint, to_uint8)
from compressor.codec.decoders import ViTOverlapDecoder, paint_tiles, tent_window
from compressor.codec.hub import HubFolder, folder_config, video_card
from compressor.codec.layers import Transformer, captured_args, init_weights, patchify, sincos_2d, unpatchify
from compressor.codec.packing import check_tokens, token_bits


class ConditionalCodec(nn.Module):
    """Frame t -> tokens given the reconstruction of frame t-1 -> frame t.

    Args:
        quantizer: an FSQ-family quantizer (``dim``, ``codebook_size``, ``tokens_to_codes``).
        image_size: (H, W) of the frames.
        patch_size: pixels per grid cell side.
        merge: horizontally adjacent grid cells that share one token (divides the grid width).
        enc_dim, enc_depth, enc_heads: encoder transformer (it reads the frame and the reference, 6 channels).
        dec_dim, dec_depth, dec_heads: decoder transformer (it reads the tokens and the reference).
        motion: the decoder also moves the reference before blending it in: a shift per grid cell, read from the
            tokens and interpolated smoothly between cells (``warp``), so a scene that moves, as a road does under a
            car driving forward, can still be kept instead of drawn again. It starts at no motion.
        overlap: the pixel head paints overlapping tiles blended with a tent window (``ViTOverlapDecoder``'s head,
            no block grid) instead of one patch per cell; ``init_from`` needs it to match the intra decoder.
    """

    def __init__(self, quantizer: nn.Module, image_size: tuple[int, int] = (128, 256), patch_size: int = 16,
                 merge: int = 1, enc_dim: int = 256, enc_depth: int = 4, enc_heads: int = 4, dec_dim: int = 384,
                 dec_depth: int = 6, dec_heads: int = 6, motion: bool = False, overlap: bool = False):
        super().__init__()
        self.init_args = captured_args({k: v for k, v in locals().items() if k != "quantizer"})
        h, w = image_size
        if h % patch_size or w % patch_size or (w // patch_size) % merge:
            raise ValueError(f"image {image_size} must tile into {patch_size}-px cells, {merge} to a token across")
        self.image_size, self.patch_size, self.merge = tuple(image_size), patch_size, merge
        self.grid = (h // patch_size, w // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1] // merge
        self.quantizer = quantizer
        self.codebook_size = quantizer.codebook_size
        self.bits_per_token = token_bits(self.codebook_size)
        self.bytes_per_frame = -(-self.num_tokens * self.bits_per_token // 8)
        p2 = patch_size * patch_size
        self.enc_dim, self.dec_dim = enc_dim, dec_dim
        self.enc_embed = nn.Linear(6 * p2, enc_dim)
        self.encoder = Transformer(enc_dim, enc_depth, enc_heads)
        self.pre_quant = nn.Linear(merge * enc_dim, quantizer.dim)
        self.post_quant = nn.Linear(quantizer.dim, merge * dec_dim)
        self.ref_embed = nn.Linear(3 * p2, dec_dim)
        self.decoder = Transformer(dec_dim, dec_depth, dec_heads)
        self.overlap = overlap
        self.head = nn.Linear(dec_dim, 3 * (4 * p2 if overlap else p2))  # pixels from the tokens
        if overlap:
            self.register_buffer("window", tent_window(patch_size), persistent=False)
        self.blend = nn.Linear(dec_dim, p2)  # per pixel: how much of the reference to keep instead
        self.motion = motion
        self.flow = nn.Linear(dec_dim, 2) if motion else None  # per cell: (dx, dy) of the reference, in cells
        init_weights(self)
        # A fresh model starts near "nothing changed" (the reference, 95%); init_from(intra) starts it near the
        # intra model instead. Either way the reference enters the encoder and decoder through zeroed projections.
        for layer in (self.ref_embed, self.blend) + ((self.flow,) if motion else ()):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.blend.bias, 3.0)
        with torch.no_grad():
            self.enc_embed.weight[:, 3 * p2 :] = 0

    @torch.no_grad()
    def init_from(self, intra: nn.Module) -> None:
        """Start from a trained per-frame model of the same widths (a ``ViTEncoder``/``ViTDecoder`` ``Autoencoder``
        with this quantizer; a ``ViTOverlapDecoder`` one if ``overlap``): the frame's path gets its weights, the
        reference's paths stay at zero, and the blend starts at 5% reference, so a conditional frame first decodes
        about as the intra model would."""
        if self.overlap != isinstance(intra.decoder, ViTOverlapDecoder):
            raise AttributeError(f"overlap={self.overlap} but the intra decoder is a {type(intra.decoder).__name__}")
        p2 = 3 * self.patch_size ** 2
        self.enc_embed.weight[:, :p2] = intra.encoder.embed.weight
        self.enc_embed.bias.copy_(intra.encoder.embed.bias)
        self.encoder.load_state_dict(intra.encoder.transformer.state_dict())
        m = self.merge  # merged cells: their mean feeds the quantizer, and each cell gets the token's code back
        self.pre_quant.weight.copy_(torch.cat([intra.pre_quant.weight / m] * m, 1))
        self.pre_quant.bias.copy_(intra.pre_quant.bias)
        self.quantizer.load_state_dict(intra.quantizer.state_dict())
        self.post_quant.weight.copy_(torch.cat([intra.post_quant.weight] * m, 0))
        self.post_quant.bias.copy_(torch.cat([intra.post_quant.bias] * m, 0))
        self.decoder.load_state_dict(intra.decoder.transformer.state_dict())
        self.head.load_state_dict(intra.decoder.head.state_dict())
        self.blend.bias.fill_(-3.0)

    # ---- training API -------------------------------------------------------------------------------------
    def forward(self, x: Tensor, ref: Tensor) -> dict[str, Tensor]:
        """x, ref: (B, 3, H, W) float in [-1, 1] -> recon (B, 3, H, W), codes (B, n, C), tokens (B, n), quant_loss."""
        q = self.encode_to_codes(x, ref)
        return {"recon": self.decode_codes(q["codes"].to(x.dtype), ref), "codes": q["codes"],
                "tokens": q["tokens"], "quant_loss": q["loss"]}

    def encode_to_codes(self, x: Tensor, ref: Tensor) -> dict[str, Tensor]:
        """x, ref: (B, 3, H, W) -> the quantizer's output for (B, n) tokens."""
        pos = sincos_2d(*self.grid, self.enc_dim, x.device)
        patches = torch.cat([patchify(x, self.patch_size), patchify(ref, self.patch_size)], -1)  # (B, N, 2 x 3p^2)
        z = self.encoder(self.enc_embed(patches) + pos.to(x.dtype))
        z = rearrange(z, "b (h w m) d -> b (h w) (m d)", h=self.grid[0], m=self.merge)  # (B, N, D) -> (B, n, mD)
        return self.quantizer(self.pre_quant(z))

    def decode_codes(self, codes: Tensor, ref: Tensor) -> Tensor:
        """codes: (B, n, C), ref: (B, 3, H, W) -> recon (B, 3, H, W): per pixel, a blend of the reference (moved,
        with ``motion``) and what the tokens say (static parts can keep the reference's detail exactly)."""
        y = rearrange(self.post_quant(codes), "b n (m d) -> b (n m) d", m=self.merge)  # (B, n, mD) -> (B, N, D)
        y = y + self.ref_embed(patchify(ref, self.patch_size)) + sincos_2d(*self.grid, self.dec_dim,
                                                                            ref.device).to(y.dtype)
        y = self.decoder(y)
        if self.motion:
            cells = rearrange(self.flow(y), "b (h w) c -> b c h w", h=self.grid[0])  # (B, 2, h, w)
            ref = warp(ref, cells.float() * self.patch_size)
        keep = torch.sigmoid(unpatchify(self.blend(y), self.patch_size, self.grid))  # (B, 1, H, W)
        drawn = (paint_tiles(self.head(y), self.window, self.grid) if self.overlap
                 else unpatchify(self.head(y), self.patch_size, self.grid))
        return keep * ref + (1 - keep) * drawn

    def export_config(self) -> dict:
        """Its constructor arguments and the quantizer's class path and arguments (JSON, or weights-only torch)."""
        q = self.quantizer
        return {"init_args": dict(self.init_args),
                "quantizer": {"class_path": f"{type(q).__module__}.{type(q).__name__}", "init_args": dict(q.init_args)}}

    def export_dict(self) -> dict:
        return {**self.export_config(),
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def check_config(cls, export, where: str = "its conditional model") -> None:
        """``ValueError`` unless ``export`` (``export_config``'s, or ``export_dict``'s) names a codec quantizer and
        arguments of the declared types within bounds. Builds nothing."""
        if not (isinstance(export, dict) and isinstance(export.get("init_args"), dict)
                and isinstance(export.get("quantizer"), dict)):
            raise ValueError(f"not a compressor checkpoint: {where} is not {{init_args, quantizer, state_dict}}")
        check_arguments(cls, export["init_args"], where)
        spec = export["quantizer"]
        if not (isinstance(spec.get("class_path"), str) and isinstance(spec.get("init_args"), dict)):
            raise ValueError(f"not a compressor checkpoint: {where}: quantizer is not {{class_path, init_args}}")
        check_arguments(part_class(spec), spec["init_args"], f"{where}: quantizer")

    @classmethod
    def from_export(cls, export) -> "ConditionalCodec":
        """The codec ``export_dict`` gave. Its arguments' types and sizes are checked first, then the weights against
        a model built on the meta device, as ``Autoencoder.from_export`` does: a hostile or damaged file is a
        ``ValueError`` before anything is allocated."""
        where = "its conditional model"
        cls.check_config(export, where)
        spec = export["quantizer"]
        args = {k: tuple(v) if k == "image_size" else v for k, v in export["init_args"].items()}
        try:
            with torch.device("meta"):
                skeleton = cls(build_part(spec), **args)
        except (ValueError, TypeError, AttributeError, AssertionError, ZeroDivisionError) as e:  # parts that do not fit
            raise ValueError(f"not a compressor checkpoint: {where}: {e}") from None
        check_weights(skeleton, export.get("state_dict"))
        codec = cls(build_part(spec), **args)
        codec.load_state_dict(export["state_dict"])
        return codec.eval()

    # ---- codec API ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: Tensor, ref: Tensor) -> Tensor:
        """frames: uint8 (B, 3, H, W); ref: float (B, 3, H, W), the previous reconstruction -> int64 (B, n)."""
        tokens = self.encode_to_codes(frames.to(ref.dtype) / 127.5 - 1, ref)["tokens"]
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(f"the model gave tokens outside [0, {self.codebook_size}): a diverged model?")
        return tokens

    @torch.no_grad()
    def decode(self, tokens: Tensor, ref: Tensor) -> Tensor:
        """tokens: (B, n); ref: float (B, 3, H, W) -> the reconstruction, float (B, 3, H, W) in [-1, 1]."""
        tokens = check_tokens(tokens, self.num_tokens, self.codebook_size)
        return self.decode_codes(self.quantizer.tokens_to_codes(tokens).to(ref.dtype), ref).clamp(-1, 1)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """image (B, C, H, W), flow (B, 2, h, w) in pixels (dx, dy), on any grid that tiles the image -> the image
    sampled at (x + dx, y + dy), bilinearly; the flow is interpolated bilinearly to every pixel first, so cells move
    smoothly into each other, and samples past the edge repeat the border. In float32 whatever the autocast."""
    B, _, H, W = image.shape
    flow = F.interpolate(flow.float(), size=(H, W), mode="bilinear", align_corners=False)  # (B, 2, H, W)
    ys, xs = torch.meshgrid(torch.arange(H, device=image.device), torch.arange(W, device=image.device), indexing="ij")
    # grid_sample's coordinates with align_corners=False: -1 and 1 are the outer edges, pixel i's centre at
    # (2i + 1) / size - 1.
    gx = (2 * (xs + flow[:, 0]) + 1) / W - 1
    gy = (2 * (ys + flow[:, 1]) + 1) / H - 1
    return F.grid_sample(image.float(), torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=False)


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
        for t in range(len(frames)):
            if t % self.gop == 0:
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
        for t, tok in enumerate(tokens):
            tok = tok.unsqueeze(0).to(device)
            if t % self.gop == 0:
                ref = self.intra.reconstruct(tok)
            else:
                ref = self.inter.decode(tok, ref)
            out.append(to_uint8(ref[0]))
        return torch.stack(out)

    def export_dict(self) -> dict:
        return {"format": VIDEO_FORMAT, "gop": self.gop, "intra": self.intra.export_dict(),
                "inter": self.inter.export_dict()}

    def save(self, path: str | os.PathLike) -> None:
        torch.save(self.export_dict(), path)

    # ---- Hugging Face Hub folder: config.json holds what video.pt holds but the weights, which go to
    # model.safetensors under the prefixes intra. and inter. (this module's state dict) ---------------------------
    def hub_config(self) -> dict:
        return {"gop": self.gop, "intra": self.intra.export_config(), "inter": self.inter.export_config()}

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
               **overrides) -> Autoencoder | VideoCodec:
    """The codec a file or Hub folder holds, so that callers need no flag for the mode: a ``VideoCodec`` for a video
    codec (``video.pt``, or a folder whose ``config.json`` has its format), else the per-frame ``Autoencoder`` that
    ``autoencoder.load`` reads (``.pt``, ``.ckpt``, Hub folder; ``overrides`` go to it). This is
    ``compressor.load``."""
    folder = os.path.isdir(path)
    # What says the mode: a folder's config.json (checked: a regular file of a bounded size holding a JSON object),
    # or a file's weights-only data.
    source = folder_config(path) if folder else read_checkpoint(path)
    if not (isinstance(source, dict) and source.get("format") == VIDEO_FORMAT):
        if folder:
            return load(path, map_location, **overrides)
        return Autoencoder.from_export(source, **overrides).to(map_location)
    if overrides:
        raise ValueError(f"{path} is a video codec: {sorted(overrides)} apply to per-frame models only")
    if folder:
        return VideoCodec.from_pretrained(path, map_location=map_location)
    return video_from_export(source, path).to(map_location)
