"""Symbols and integer CDFs for compressai's rANS coder.

A token is split into mixed-radix *digits* (for FSQ: one digit per channel, the quantizer's own levels), so every
coded alphabet has at most 8 symbols. Probabilities become integer CDFs here, deterministically, by integer
arithmetic on the float64 image of the float32 probabilities: the same probabilities give the same CDFs, and so
the same bits, on every machine.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

PRECISION = 16  # compressai's rANS works with frequencies that sum to 2**16
TOTAL = 1 << PRECISION


def digit_radices(codebook_size: int, levels: list[int] | None = None) -> list[int]:
    """The alphabets a token splits into: FSQ levels when known, otherwise base-8 digits (e.g. VQ 16384 -> 8^4 x 4)."""
    if levels is not None:
        if math.prod(levels) != codebook_size:
            raise ValueError(f"levels {levels} multiply to {math.prod(levels)}, not codebook {codebook_size}")
        return list(levels)
    radices, size = [], 1
    while size < codebook_size:
        r = min(8, -(-codebook_size // size))
        radices.append(r)
        size *= r
    return radices


def to_digits(tokens: Tensor, radices: list[int]) -> Tensor:
    """tokens (...) -> digits (..., C), least significant first (the FSQ convention: channel 0 varies fastest)."""
    basis = torch.cumprod(torch.tensor([1] + radices[:-1]), 0)
    return (tokens.long().unsqueeze(-1) // basis) % torch.tensor(radices)


def from_digits(digits: Tensor, radices: list[int]) -> Tensor:
    """digits (..., C) -> tokens (...) int64; the inverse of ``to_digits``."""
    basis = torch.cumprod(torch.tensor([1] + radices[:-1]), 0)
    return (digits.long() * basis).sum(-1)


def quantized_cdfs(probs: Tensor | np.ndarray) -> np.ndarray:
    """probs (M, L) rows summing to ~1 -> int32 CDFs (M, L + 2) for compressai, with total 2**16.

    Every symbol gets a frequency of at least 1 (so nothing is uncodable) and the escape symbol L that compressai
    reserves for out-of-range values gets exactly 1. Rounding leftovers go to the most probable symbol.
    """
    p = np.asarray(probs.detach().cpu().float() if isinstance(probs, Tensor) else probs, dtype=np.float32)
    m, n = p.shape
    if n + 1 > TOTAL:
        raise ValueError(f"an alphabet of {n} symbols does not fit {PRECISION}-bit frequencies")
    p = np.clip(p.astype(np.float64), 0.0, None)
    p /= np.maximum(p.sum(1, keepdims=True), 1e-300)
    freq = np.floor(p * (TOTAL - n - 1)).astype(np.int64) + 1
    freq[np.arange(m), p.argmax(1)] += TOTAL - 1 - freq.sum(1)
    cdf = np.zeros((m, n + 2), dtype=np.int64)
    np.cumsum(freq, axis=1, out=cdf[:, 1 : n + 1])
    cdf[:, n + 1] = TOTAL
    return cdf.astype(np.int32)


class TableSet:
    """A list of CDF tables in the form compressai takes them (Python lists, converted once)."""

    def __init__(self, cdfs: list[np.ndarray]):
        self.cdfs = [c.tolist() for c in cdfs]
        self.lengths = [len(c) for c in cdfs]
        self.offsets = [0] * len(cdfs)

    @classmethod
    def from_blocks(cls, blocks: list[np.ndarray]) -> "TableSet":
        """Blocks of CDFs (M_k, L_k + 2) -> one table set, tables numbered block after block."""
        return cls([row for block in blocks for row in block])


class Encoder:
    """Buffers symbols with their tables and flushes one rANS payload (the decoder pops them in the same order)."""

    def __init__(self):
        self._enc = BufferedRansEncoder()

    def encode(self, symbols: np.ndarray, indexes: np.ndarray, tables: TableSet) -> None:
        self._enc.encode_with_indexes(symbols.astype(np.int32).tolist(), indexes.astype(np.int32).tolist(),
                                      tables.cdfs, tables.lengths, tables.offsets)

    def flush(self) -> bytes:
        return self._enc.flush()


class Decoder:
    def __init__(self, payload: bytes):
        self._dec = RansDecoder()
        self._dec.set_stream(payload)

    def decode(self, indexes: np.ndarray, tables: TableSet) -> np.ndarray:
        return np.asarray(self._dec.decode_stream(indexes.astype(np.int32).tolist(), tables.cdfs, tables.lengths,
                                                  tables.offsets), dtype=np.int64)
