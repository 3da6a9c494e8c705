"""Symbols and integer CDFs for compressai's rANS coder.

A token is split into mixed-radix *digits* (for FSQ: one digit per channel, the quantizer's own levels; for any
other codebook size its small factors, see ``digit_radices``), so every coded alphabet has at most 8 symbols.
Probabilities become integer CDFs here, deterministically, by integer arithmetic on the float64 image of the float32
probabilities: the same probabilities give the same CDFs, and so the same bits, on every machine.
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
    """The alphabets (radices, least significant first) a token splits into, none over 8 symbols, for any codebook.

    FSQ levels when known: a digit is then a quantizer channel. Otherwise the codebook's factors from 8 down to 2
    first, so that the digits cover it exactly (1000 -> 8 x 5 x 5 x 5, 15360 -> 8 x 8 x 8 x 6 x 5, a 1024-code VQ
    -> 8 x 8 x 8 x 2, 16384 -> 8^4 x 4); what no such factor divides (a prime over 7, e.g. 1009) becomes base-8
    digits that cover it (1009 -> 8 x 8 x 8 x 2 = 1024). Digit combinations beyond the codebook never occur: they
    only hold a little probability that real tokens could have had, and coding stays lossless.
    """
    if levels is not None:
        if math.prod(levels) != codebook_size:
            raise ValueError(f"levels {levels} multiply to {math.prod(levels)}, not codebook {codebook_size}")
        return list(levels)
    if codebook_size < 2:
        raise ValueError(f"a codebook needs at least 2 codes, got {codebook_size}")
    radices, rest = [], codebook_size
    while (factor := next((f for f in range(8, 1, -1) if rest % f == 0), None)) is not None:
        radices.append(factor)
        rest //= factor
    size = 1
    while size < rest:  # the part with no factor <= 8: covering base-8 digits, the last one just large enough
        r = min(8, -(-rest // size))
        radices.append(r)
        size *= r
    return radices


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
    """A list of CDF tables in the form compressai takes them (Python lists, converted once).

    Every table carries one extra entry equal to the total. The encoder is given sizes without it, so it codes
    exactly as before. The decoder is given sizes with it: compressai treats a table's last symbol as an escape
    into "bypass" coding, which reads a length from the stream and then that many 4-bit groups with no bounds
    check. With the extra (zero-frequency, never decodable) entry as the escape, the real escape symbol decodes as
    an ordinary one, which ``Decoder`` rejects, so no stream can drive the decoder into bypass mode.
    """

    def __init__(self, cdfs: list[np.ndarray]):
        self.cdfs = [np.append(c, TOTAL).tolist() for c in cdfs]
        self.lengths = [len(c) for c in cdfs]  # for the encoder
        self.decode_lengths = [len(c) + 1 for c in cdfs]
        self.offsets = [0] * len(cdfs)
        self.alphabets = np.array([len(c) - 2 for c in cdfs])  # symbols per table, escape excluded
        width = max(len(c) for c in cdfs)
        self._cdf = np.full((len(cdfs), width), TOTAL, dtype=np.int64)  # for frequency look-ups
        for i, c in enumerate(cdfs):
            self._cdf[i, : len(c)] = c

    def frequencies(self, indexes: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        return self._cdf[indexes, symbols + 1] - self._cdf[indexes, symbols]


class Encoder:
    """Buffers symbols with their tables and flushes one rANS payload (the decoder pops them in the same order)."""

    def __init__(self):
        self._enc = BufferedRansEncoder()

    def encode(self, symbols: np.ndarray, indexes: np.ndarray, tables: TableSet) -> None:
        self._enc.encode_with_indexes(symbols.astype(np.int32).tolist(), indexes.astype(np.int32).tolist(),
                                      tables.cdfs, tables.lengths, tables.offsets)

    def flush(self) -> bytes:
        return self._enc.flush()


# compressai's decoder (ryg's rans64) reads the stream without bounds checks: a crafted payload could make it
# read past its buffer. What bounds the reads: the state starts in [2**31, 2**63) (checked) and then never leaves
# [2**31, 2**64); each 4-byte read adds at least 32 bits to log2(state), and each decoded symbol of frequency f
# removes at most 16 - log2(f) + SLACK_BITS bits (SLACK_BITS: the rounding of the state update, the state being
# >= 2**31 and the frequencies < 2**16; a read adds at most 32 + SLACK_BITS). So
#     32 * reads < 64 - 31 + (bits of the decoded symbols) + SLACK_BITS * (number of symbols),
# and a symbol costs at most 16 bits. ``Decoder`` decodes in chunks of CHUNK symbols from a zero-padded copy of
# the payload and, before each chunk, checks that even 16 bits per symbol cannot take the reads past the padding.
SLACK_BITS = -math.log2(1 - 2.0**-15)
CHUNK = 1 << 16


def max_bytes_read(bits: float, symbols: int) -> int:
    """The most bytes the decoder can have read after popping ``symbols`` symbols worth ``bits`` bits in all."""
    return 8 + 4 * math.floor((33 + bits + symbols * SLACK_BITS) / 32)


def min_symbol_bits(alphabet: int) -> float:
    """The fewest bits a symbol of this alphabet can cost in ``quantized_cdfs`` tables (the most probable one
    gets at most 2**16 - alphabet), less the rounding slack: no payload codes a symbol in fewer."""
    return max(0.0, -math.log2(1 - alphabet / TOTAL) - SLACK_BITS)


class Decoder:
    """Pops symbols from one rANS payload, never reading outside it.

    Args:
        payload: an encoder's flushed bytes.
        num_symbols: how many symbols will be decoded in all (sizes the padding that legal streams may need).
    """

    def __init__(self, payload: bytes, num_symbols: int):
        if len(payload) < 8 or len(payload) % 4:
            raise ValueError(f"a rANS payload is a whole number of 4-byte words, at least 2; got {len(payload)} bytes")
        if not 1 << 31 <= int.from_bytes(payload[:8], "little") < 1 << 63:
            raise ValueError("the payload does not start with a valid rANS state")
        # A legal stream's reads never pass its end, but the bound above, evaluated as a legal stream is decoded,
        # can exceed its end by up to 9 bytes plus SLACK_BITS / 8 per symbol and per word; a chunk adds 2 bytes
        # per symbol to it.
        pad = 2 * CHUNK + 64 + math.ceil((num_symbols + len(payload)) * SLACK_BITS / 2)
        self._size = len(payload) + pad
        self._dec = RansDecoder()
        self._dec.set_stream(payload + bytes(pad))
        self._bits, self._symbols = 0.0, 0

    def decode(self, indexes: np.ndarray, tables: TableSet) -> np.ndarray:
        out = []
        for start in range(0, len(indexes), CHUNK):
            idx = indexes[start : start + CHUNK].astype(np.int64)
            if max_bytes_read(self._bits + 16 * len(idx), self._symbols + len(idx)) > self._size:
                raise ValueError("the stream ends before the symbols its header promises")
            symbols = np.asarray(self._dec.decode_stream(idx.astype(np.int32).tolist(), tables.cdfs,
                                                         tables.decode_lengths, tables.offsets), dtype=np.int64)
            if (symbols >= tables.alphabets[idx]).any():
                raise ValueError("the stream holds an escape symbol, which no encoder here writes")
            self._bits += float(np.sum(PRECISION - np.log2(tables.frequencies(idx, symbols))))
            self._symbols += len(idx)
            out.append(symbols)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
