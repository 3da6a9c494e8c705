"""The token storage format: bit packing (the on-the-wire size of a frame is exactly ceil(num_tokens * bits / 8)
bytes), tokens as mixed-radix digits, the CRC that samples and coded segments carry, and which frames of a clip are
intra (``frame_types``). A leaf: it imports only numpy and torch, so the latent
readers and the entropy coder use it without loading any model code."""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor


def token_bits(codebook_size: int) -> int:
    """Bits needed to store one token of a codebook of this size."""
    return max(1, math.ceil(math.log2(codebook_size)))


def check_tokens(tokens: Tensor, num_tokens: int, codebook_size: int) -> Tensor:
    """Tokens (B, num_tokens) of any integer dtype, checked, as int64 (torch has no min/max or indexing kernels for
    uint16 or uint32); ``ValueError`` for another shape or dtype, or a token outside [0, codebook_size), which a
    decoder would otherwise take modulo its radix as some other code. Every decoder calls it."""
    if not isinstance(tokens, Tensor):
        raise ValueError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    if tokens.ndim != 2 or tokens.shape[1] != num_tokens:
        raise ValueError(f"tokens must have shape (B, {num_tokens}), got {tuple(tokens.shape)}")
    tokens = tokens.long()  # uint64 values of 2**63 or more turn negative: refused below
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
        raise ValueError(f"tokens must lie in [0, {codebook_size}), got range [{int(tokens.min())}, "
                         f"{int(tokens.max())}]")
    return tokens


def to_digits(tokens: Tensor, radices: list[int]) -> Tensor:
    """tokens (...) -> digits (..., C), least significant first (the FSQ convention: channel 0 varies fastest).

    Tokens as mixed-radix numbers: an FSQ token's digits are its channels' levels, and the entropy coder codes
    tokens digit by digit."""
    radix = torch.tensor(list(radices), device=tokens.device)
    return (tokens.long().unsqueeze(-1) // _basis(radix)) % radix


def from_digits(digits: Tensor, radices: list[int]) -> Tensor:
    """digits (..., C) -> tokens (...) int64; the inverse of ``to_digits``."""
    return (digits.long() * _basis(torch.tensor(list(radices), device=digits.device))).sum(-1)


def _basis(radix: Tensor) -> Tensor:
    """The place value of each digit: (1, r0, r0 r1, ...)."""
    return torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), 0)


def pack(tokens: Tensor | np.ndarray, bits: int = 14) -> bytes:
    """tokens: integer (B, N) in [0, 2**bits) -> bytes, each frame padded to a whole byte and concatenated."""
    t = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens)
    if t.ndim != 2 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array of shape (B, N), got {t.dtype} {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= 2**bits):
        raise ValueError(f"tokens must lie in [0, 2**{bits}), got range [{t.min()}, {t.max()}]")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)  # most significant bit first
    bitplanes = ((t.astype(np.int64)[..., None] >> shifts) & 1).astype(np.uint8)  # (B, N, bits)
    return np.packbits(bitplanes.reshape(t.shape[0], -1), axis=1).tobytes()  # pads each frame to a byte


def unpack(data: bytes, num_frames: int, num_tokens: int = 128, bits: int = 14) -> Tensor:
    """Exact inverse of ``pack``: bytes -> int64 tokens (num_frames, num_tokens)."""
    frame_bytes = -(-num_tokens * bits // 8)
    if len(data) != num_frames * frame_bytes:
        raise ValueError(f"expected {num_frames} x {frame_bytes} bytes, got {len(data)}")
    packed = np.frombuffer(data, dtype=np.uint8).reshape(num_frames, frame_bytes)
    bitplanes = np.unpackbits(packed, axis=1)[:, : num_tokens * bits].reshape(num_frames, num_tokens, bits)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return torch.from_numpy((bitplanes.astype(np.int64) * weights).sum(-1))


def frame_types(num_frames: int, gop: int) -> str:
    """The one intra-frame rule: ``"I"`` (coded alone) at every multiple of ``gop``, ``"P"`` (coded against the frame
    before) elsewhere, for a clip or segment that starts a group. Codecs, shards, export checks and evaluation all
    read it from here."""
    if gop < 1:
        raise ValueError(f"gop must be >= 1, got {gop}")
    return "".join("I" if t % gop == 0 else "P" for t in range(num_frames))


def tokens_crc32(tokens: Tensor | np.ndarray) -> int:
    """CRC-32 of tokens (T, N) as little-endian uint16, row-major: how ``tokens.npy`` stores them. Samples and coded
    segments carry it, so tokens are checked after every read or decode."""
    t = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens)
    return zlib.crc32(np.ascontiguousarray(t.astype("<u2")).tobytes())
