"""The adaptive prior: codes any token stream with no fitted file, learning its statistics while it codes.

Encoder and decoder start from empty counts and update the same counts after every frame, so they stay in step.
Every probability is an integer over 2**16 computed from integer counts (integer division only), and the coder
(constriction's 24-bit ANS, ``Bernoulli`` family) is handed exactly those dyadic values, which it scales to its
24-bit fixed point by a power of two: the same tokens give the same bytes on every machine.

This file is the prior a segment header names: its version and format, the order in which a frame's decisions are
coded, and the work a payload pays for. The decisions' probabilities (which decisions, their contexts, counts,
mixers) are the model, ``compressor.entropy.adaptive_model`` (version 1's: ``compressor.entropy.adaptive_v1``).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch
from torch import Tensor

from compressor.entropy import adaptive_v1
from compressor.entropy.adaptive_model import FRAME_P_MIN, _Model
from compressor.entropy.coding import digit_radices
from compressor.entropy.mixing import ONE
from compressor.entropy.priors import Prior

KIND = "adaptive"
VERSION = 4  # in the segment header (prior_id): any change to the model or the format below must bump it
CODER_ID = 2  # the header's coder byte: constriction 0.5 ANS, 24-bit, Bernoulli decisions
# The mixers' steps (flags, tree) by version. Version 2's step of 4 left the mixers barely moving from their start
# (all weight on the chain blend); 128 / 256 code recipe-48k's val tokens in 5.9% fewer bits (3.926 against 4.174
# bits/token: reports/entropy-adaptive/recipe-48k-val, from compressor.tools.entropy report --adaptive-versions 2 3 4).
RATES = {2: (4, 4), 3: (128, 256), 4: (128, 256)}  # version 4: version 3's model, payloads that pay their work
# The least a frame can cost in the payload: its frame flag at >= FRAME_P_MIN less the ANS's rounding (its state
# stays >= 2**32 and frequencies < 2**24, so a decode step removes at most log2(1 + 2**-8) bits less than the cost).
MIN_FRAME_BITS = -math.log2(1 - FRAME_P_MIN / ONE) - math.log2(1 + 2.0**-8)
# A decoder's work, in units of about one coded decision's time (issue 39: a crafted header claimed 468 frames a
# payload byte, whose repeat flags cost ~0.02 bits each, and a 1 KB segment cost 87 s of CPU against 0.03 s for real
# tokens). Every frame costs WORK_FRAME, every frame that is not a repeat (a segment's first included) WORK_CHANGED
# more (its ~2 + depth batches), every decision 1. A payload pays for WORK_PER_BYTE units a byte plus WORK_FREE: the
# version-4 encoder pads a payload that would pay for less (static scenes: ~0.7 bits a repeated frame), and the
# decoder stops at the first frame past what its payload pays for. Real tokens pay ~4x what they use (recipe-48k
# val: ~63 bytes and ~1,250 units a frame), so only near-static segments are padded; a crafted payload buys at most
# WORK_PER_BYTE units a byte, which compressor/tools/bench_crafted_streams.py times against real ones: at 96 units a
# byte (real tokens paying 8x their use) and 8 a frame (a repeated frame's ~27 us is ~16 units' time) a legal static
# scene cost 13.6x real tokens' CPU per KB, at 48 and 16 the bound holds under 10x.
MAX_TOKENS = 1 << 15  # positions per frame (see AdaptivePrior)
WORK_FRAME, WORK_CHANGED, WORK_PER_BYTE, WORK_FREE = 16, 64, 48, 4096


def work_budget(payload_bytes: int) -> int:
    """The work units (see WORK_FRAME) a payload of this many bytes pays for."""
    return WORK_PER_BYTE * payload_bytes + WORK_FREE


def _constriction():
    import constriction

    return constriction.stream.model.Bernoulli(perfect=False), constriction.stream.stack.AnsCoder


def _probs(p: np.ndarray) -> np.ndarray:
    return p.astype(np.float64) / ONE  # exact: an integer over 2**16


def _decode(coder, family, p: np.ndarray) -> np.ndarray:
    """Decisions with P(1) = p / 2**16 (int64); none for an empty batch."""
    return coder.decode(family, _probs(p)).astype(np.int64) if len(p) else np.zeros(0, np.int64)


class AdaptivePrior(Prior):
    """Codes segments of any codebook size with no fitted parameters (see the module's docstring).

    Args:
        codebook_size: codes (2 .. 65536: tokens are uint16).
        grid: the token grid (h, w), row-major; neighbours are taken on it.
        model_id: the compressor whose tokens these are ("" for unknown), written in the segment header.
    """

    kind = KIND
    coder = CODER_ID

    def __init__(self, codebook_size: int, grid: tuple[int, int], model_id: str = "", version: int = VERSION):
        # One frame adds up to one decision per position to a context's uint16 count (the tree's first node sees
        # every changed position), on top of < 2 * 4095 kept: more than MAX_TOKENS positions would wrap it.
        if (not 2 <= codebook_size <= 1 << 16 or not (1 <= grid[0] <= 255 and 1 <= grid[1] <= 255)
                or grid[0] * grid[1] > MAX_TOKENS):
            raise ValueError(f"the adaptive prior codes 2..65536 codes on grids up to 255x255 of at most {MAX_TOKENS} "
                             f"tokens, got {codebook_size} codes on {tuple(grid)}")
        if version != 1 and version not in RATES:
            raise ValueError(f"adaptive prior version {version}; this code reads versions 1 to {VERSION}")
        super().__init__(codebook_size, digit_radices(codebook_size), grid, model_id)
        self.version = version

    def prior_id(self) -> str:
        """Not a hash: the version, grid and codebook themselves, so a segment says how to decode it."""
        return struct.pack("<HBBI", self.version, *self.grid, self.codebook_size).hex()

    @classmethod
    def from_id(cls, prior_id: str, model_id: str = "") -> "AdaptivePrior":
        """The prior a segment header names: version 4, or 1 to 3 for segments written before it (``ValueError`` for
        another version or impossible parameters)."""
        version, h, w, codebook = struct.unpack("<HBBI", bytes.fromhex(prior_id))
        return cls(codebook, (h, w), model_id, version)

    def _new_model(self) -> _Model | adaptive_v1._Model:
        if self.version == 1:
            return adaptive_v1._Model(self.codebook_size, self.grid)
        return _Model(self.codebook_size, self.grid, RATES[self.version])

    def max_frames(self, payload_bytes: int) -> int:
        """The most frames a payload of this size pays for (each costs at least WORK_FRAME and its frame flag),
        within the bound of the bits it holds: every frame costs at least MIN_FRAME_BITS, the payload's words hold
        at most 32 bits each, its initial state 64."""
        bits_bound = math.floor((64 + 8 * payload_bytes) / MIN_FRAME_BITS) + 1
        return min(bits_bound, 1 + max(0, work_budget(payload_bytes) - WORK_FRAME) // (WORK_FRAME + 1))

    def frame_work(self, t: int, repeated: bool, changed: int) -> int:
        """Work units of frame t (see WORK_FRAME): its frame flag (t >= 1), its position flags unless it repeats,
        ``changed`` tokens of up to ``depth`` tree decisions each."""
        if repeated:
            return WORK_FRAME + 1
        depth = max(1, (self.codebook_size - 1).bit_length())
        return WORK_FRAME + WORK_CHANGED + (1 + self.num_tokens if t else 0) + changed * depth

    def segment_work(self, tokens: np.ndarray) -> int:
        """The work units a decoder spends on these tokens (T, N)."""
        changed = (tokens[1:] != tokens[:-1]).sum(1)
        return self.frame_work(0, False, self.num_tokens) * (len(tokens) > 0) + sum(
            self.frame_work(t + 1, int(c) == 0, int(c)) for t, c in enumerate(changed))

    def _decisions(self, tokens: np.ndarray):
        """Yield (frame, bits, P(1) * 2**16) batches in coding order: the encoder's view of ``_model`` coding."""
        model = self._new_model()
        for t, frame in enumerate(tokens):
            repeated = None
            pos = np.arange(self.num_tokens)
            if t:
                repeated = bool((frame == model.prev[: self.num_tokens]).all())
                yield t, np.array([int(repeated)]), model.frame_flag()
                if not repeated:
                    changed = np.zeros(self.num_tokens + 1, np.int64)
                    changed[: self.num_tokens] = frame != model.prev[: self.num_tokens]
                    for phase, at in (("a", model.phase_a), ("b", model.phase_b)):
                        p = model.flags(phase, changed)
                        model.flag_bits(changed[at])
                        yield t, changed[at], p
                    pos = np.flatnonzero(changed[: self.num_tokens])
                else:
                    pos = pos[:0]
            values = frame[pos]
            prefix = np.zeros(len(pos), np.int64)
            model.tree_begin(pos)
            for level in range(model.depth):
                bit = (values >> (model.depth - 1 - level)) & 1
                coded, p = model.tree(level, prefix)
                model.tree_bits(bit[coded])
                yield t, bit[coded], p
                prefix = 2 * prefix + bit
            model.end_frame(frame, repeated)

    def encode_payload(self, tokens: Tensor) -> bytes:
        self.check_tokens(tokens)
        family, AnsCoder = _constriction()
        frames = tokens.numpy().astype(np.int64)
        batches = [(b, p) for _, b, p in self._decisions(frames)]
        # Version 4 pads a payload to what its decoding costs (work_budget): uniform bits pushed first, so that they
        # sit past the segment's last decision and are never decoded. Each adds one bit; a word more if rounding
        # leaves it short. Ones: a zero pushed on the empty coder leaves its state at 0, costing nothing.
        need = self._padded_bytes(frames) if self.version >= 4 else 0
        pad = 0
        while True:
            coder = AnsCoder()
            if pad:
                coder.encode_reverse(np.ones(pad, np.int32), family, np.full(pad, 0.5))
            if batches:  # one call: encode_reverse pushes them so that decoding pops them in coding order
                coder.encode_reverse(np.concatenate([b for b, _ in batches]).astype(np.int32), family,
                                     _probs(np.concatenate([p for _, p in batches])))
            payload = coder.get_compressed().astype("<u4").tobytes()
            if len(payload) >= need:
                return payload
            assert pad <= 8 * need + 256, "padding bits must each add a bit"
            pad += 8 * (need - len(payload)) if not pad else 32

    def _padded_bytes(self, frames: np.ndarray) -> int:
        """The least payload bytes that pay for decoding these frames."""
        return max(0, -(-(self.segment_work(frames) - WORK_FREE) // WORK_PER_BYTE))

    def decode_payload(self, payload: bytes, num_frames: int) -> Tensor:
        if len(payload) % 4:
            raise ValueError(f"an ANS payload is a whole number of 4-byte words; got {len(payload)} bytes")
        family, AnsCoder = _constriction()
        coder = AnsCoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        model = self._new_model()
        out = np.zeros((num_frames, self.num_tokens), np.int64)
        budget, work = work_budget(len(payload)), 0

        def spend(t: int, units: int) -> int:  # before the work is done: stop at the first frame it cannot pay
            if work + units > budget:
                raise ValueError(f"frame {t} of {num_frames} needs more decoding than a {len(payload)}-byte payload "
                                 f"pays for ({budget} work units): a crafted or damaged segment"
                                 + (f", or one written by adaptive version {self.version} before payloads paid "
                                    "for their decoding (re-encode it)" if self.version < 4 else ""))
            return work + units

        for t in range(num_frames):
            repeated = None
            pos = np.arange(self.num_tokens)
            frame = model.prev[: self.num_tokens].copy() if t else np.zeros(self.num_tokens, np.int64)
            if t:
                repeated = bool(coder.decode(family, _probs(model.frame_flag()))[0])
                if repeated:  # nothing else to decode: the tree over no position would change no state
                    work = spend(t, self.frame_work(t, True, 0))
                    out[t] = frame
                    model.end_frame(frame, repeated)
                    continue
                work = spend(t, self.frame_work(t, False, 0))
                changed = np.zeros(self.num_tokens + 1, np.int64)
                for phase, at in (("a", model.phase_a), ("b", model.phase_b)):
                    changed[at] = _decode(coder, family, model.flags(phase, changed))
                    model.flag_bits(changed[at])
                pos = np.flatnonzero(changed[: self.num_tokens])
                if not len(pos):
                    raise ValueError(f"frame {t} is flagged as changed with no changed token: no encoder writes that")
                work = spend(t, self.frame_work(t, False, len(pos)) - self.frame_work(t, False, 0))
            else:
                work = spend(t, self.frame_work(t, False, len(pos)))
            prefix = np.zeros(len(pos), np.int64)
            model.tree_begin(pos)
            for level in range(model.depth):
                coded, p = model.tree(level, prefix)
                bit = np.zeros(len(pos), np.int64)
                bit[coded] = _decode(coder, family, p)
                model.tree_bits(bit[coded])
                prefix = 2 * prefix + bit
            if t and (prefix == frame[pos]).any():
                raise ValueError(f"frame {t} has a token flagged as changed that did not: no encoder writes that")
            frame[pos] = prefix
            if frame.max(initial=0) >= self.codebook_size:
                raise ValueError(f"frame {t} decodes to a token outside the codebook of {self.codebook_size}")
            out[t] = frame
            model.end_frame(frame, repeated)
        # No check that the coder ends empty: constriction's coder is not always empty after a legal stream's last
        # symbol (seen on real VQ tokens), and a version-4 payload holds padding past it. Damage is caught by the
        # token CRC; the work budget bounds the time spent before that.
        return torch.from_numpy(out)

    @torch.no_grad()
    def bits(self, tokens: Tensor) -> Tensor:
        """Ideal bits per frame (T,) under the integer probabilities the coder is given."""
        out = torch.zeros(len(tokens), dtype=torch.float64)
        for t, b, p in self._decisions(tokens.numpy().astype(np.int64)):
            q = np.where(b == 1, p, ONE - p)
            out[t] += float(np.sum(16 - np.log2(q)))
        return out
