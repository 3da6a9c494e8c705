"""The adaptive prior: codes any token stream with no fitted file, learning its statistics while it codes.

Encoder and decoder start from empty counts and update the same counts after every frame, so they stay in step.
Every probability is an integer over 2**16 computed from integer counts (integer division only), and the coder
(constriction's 24-bit ANS, ``Bernoulli`` family) is handed exactly those dyadic values, which it scales to its
24-bit fixed point by a power of two: the same tokens give the same bytes on every machine.

A frame is coded as binary decisions, in batches (one constriction call per batch, never one per token):

1. *Frame repeats?* (t >= 1) one flag: the whole frame equals the previous one (a static scene costs ~0 bits).
2. *Token repeats?* one flag per position, in two checkerboard phases: phase A sees the previous frame's changes
   (this position's age since its last change, its 8 neighbours' changes), phase B also sees how many of its 4
   neighbours (all in phase A) changed in this frame. 67-94% of dashcam tokens repeat the previous frame's.
3. *Which token?* for each changed position (every position of a segment's first frame), the token's bits from the
   most significant, each a decision at a node of the binary tree over the codebook. Whole tokens, never digits:
   a VQ index's digits mean nothing. Branches that hold no code (codebooks that are not powers of 2) are skipped.

Each decision's probability blends context orders the way PPM and CTW do: a KT estimate over the coarsest context,
then each finer context's counts with ``strength`` pseudo-counts of the coarser estimate,
``p_k = (ones_k * 2**16 + strength_k * p_{k-1}) // (n_k + strength_k)``. Counts are halved past a limit, so the
model follows a changing scene. Counts are updated once per frame (sums, so their order within a frame does not
matter): that is what lets a whole batch's decisions be computed at once. Each batch's contexts and probabilities
are one call of a compiled loop (``compressor.entropy.kernels``, numba), all integer arithmetic.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch
from torch import Tensor

from compressor.entropy import adaptive_v1, kernels
from compressor.entropy.coding import digit_radices
from compressor.entropy.kernels import HASH_BITS
from compressor.entropy.mixing import APM, ONE, Mixer, kt
from compressor.entropy.priors import Prior

KIND = "adaptive"
VERSION = 4  # in the segment header (prior_id): any change to the model or the format below must bump it
CODER_ID = 2  # the header's coder byte: constriction 0.5 ANS, 24-bit, Bernoulli decisions
FRAME_P_MIN = 1 << 10  # the frame flag's less likely side keeps >= 2**-6, which bounds frames per payload byte
TREE_STRENGTH = (0, 2, 2, 2)  # the chain blend's pseudo-counts (its first order takes none)
FLAG_STRENGTH = (0, 4, 2)
# The mixers' steps (flags, tree) by version. Version 2's step of 4 left the mixers barely moving from their start
# (all weight on the chain blend); 128 / 256 gave 6% fewer ideal bits on FSQ val tokens and 3% on VQ's in issue 24's
# exploration (not yet in a committed report: measure with compressor.tools.entropy report before citing it).
RATES = {2: (4, 4), 3: (128, 256), 4: (128, 256)}  # version 4: version 3's model, payloads that pay their work
_FLAG_SALTS = np.array([1, 2], np.uint64)  # one salt per hashed table, so that their keys do not collide alike
_TREE_SALTS = np.array([3, 4, 5, 6], np.uint64)
# The least a frame can cost in the payload: its frame flag at >= FRAME_P_MIN less the ANS's rounding (its state
# stays >= 2**32 and frequencies < 2**24, so a decode step removes at most log2(1 + 2**-8) bits less than the cost).
MIN_FRAME_BITS = -math.log2(1 - FRAME_P_MIN / ONE) - math.log2(1 + 2.0**-8)
# A decoder's work, in units of about one coded decision's time (issue 39: a crafted header claimed 468 frames a
# payload byte, whose repeat flags cost ~0.02 bits each, and a 1 KB segment cost 87 s of CPU against 0.03 s for real
# tokens). Every frame costs WORK_FRAME, every frame that is not a repeat (a segment's first included) WORK_CHANGED
# more (its ~2 + depth batches), every decision 1. A payload pays for WORK_PER_BYTE units a byte plus WORK_FREE: the
# version-4 encoder pads a payload that would pay for less (static scenes: ~0.7 bits a repeated frame), and the
# decoder stops at the first frame past what its payload pays for. Real tokens pay several times what they use
# (recipe-48k val: ~63 bytes and ~1,000 units a frame), so only near-static segments are padded; a crafted payload
# buys at most WORK_PER_BYTE units a byte, which compressor/tools/bench_crafted_streams.py times against real ones.
MAX_TOKENS = 1 << 15  # positions per frame (see AdaptivePrior)
WORK_FRAME, WORK_CHANGED, WORK_PER_BYTE, WORK_FREE = 8, 64, 96, 4096
_O1 = 6 * 7 * 6  # (now, age, ring) flag contexts
_RATE_EDGES = np.array([1, 3, 6, 12, 20, 32, 48])  # a frame's changed share (of 64) -> buckets 0..7


class _Tables:
    """Binary counts (n, ones) per context for several tables at once, each halved past its own limit so that old
    statistics fade. The tables sit end to end in one (contexts, 2) array, so a batch reads every table's counts
    with one gather (n and ones side by side: one cache miss per hashed context, not two).

    Args:
        sizes: contexts per table.
        limits: per table, the count past which n and ones are halved.
    """

    def __init__(self, sizes: list[int], limits: list[int]):
        assert max(limits) < 1 << 14  # n stays < 2 * limit + a frame's decisions (< 2**15): uint16 holds it
        self.offsets = np.cumsum([0] + sizes[:-1]).astype(np.int64)  # (k,) where each table starts
        self.limits = np.array(limits, np.int64)
        # (n, ones) per context, uint16: half the memory of int32, so fewer cache misses and page faults on the
        # 2**HASH_BITS tables (the coder's time goes mostly to reading and writing them).
        self.c = np.zeros((sum(sizes), 2), np.uint16)

    def counts(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """idx (m, k): a context per table -> n, ones (m, k) int64."""
        c = self.c[idx + self.offsets].astype(np.int64)  # (m, k, 2)
        return c[..., 0], c[..., 1]

    def update(self, idx: np.ndarray, bits: np.ndarray) -> None:
        """Add a frame's decisions: idx (m, k), bits (m,). A context may occur many times: sums, so their order
        does not matter."""
        kernels.update_counts(self.c, self.offsets, self.limits, idx, bits)


def _clip(p: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.minimum(np.maximum(p, lo), hi)  # (np.clip's wrapper costs more than the work on these batches)


class _Stage:
    """One kind of decision (the repeat flags, or the token tree): its context tables, a chain blend of the first
    ones (PPM/CTW-like), a mixer over that blend and every table's own estimate, and an APM after the mixer.

    ``predict`` takes each table's context index for a batch (m, tables); ``learn`` takes the batch's bits.
    Everything learns at the frame's end, in one batch: the mixer's weight sets and the APM's rows are chosen by
    contexts that differ between the batches of a frame (tree level, checkerboard phase), so no batch reads what
    an earlier batch of the same frame would have changed, and the result is the same as learning batch by batch.
    """

    def __init__(self, sizes: list[int], limits: list[int], chain: tuple[int, ...], sets: int, apm_contexts: int,
                 rate: int):
        self.tables, self.chain = _Tables(sizes, limits), np.array(chain, np.int64)
        inputs = len(sizes) + 2  # the chain blend, each table, a bias
        self.mixer = Mixer(inputs, sets, [ONE] + [0] * (inputs - 1), rate)
        self.apm = APM(apm_contexts)
        self._pending: tuple | None = None
        self._learned: list[tuple] = []

    def predict(self, idx: np.ndarray, sel: np.ndarray, apm_ctx: np.ndarray) -> np.ndarray:
        """P(1) * 2**16 (m,) for a batch: idx (m, tables) a context per table, sel (m,) the mixer's weight set,
        apm_ctx (m,) the APM's row. Each table's KT estimate, the chain blend of the first ones (coarse to fine),
        then the mixer over them all (stretched) and the APM (``kernels.predict`` computes it in one pass)."""
        t = self.tables
        p, st, p_mix, apm_at, apm_w = kernels.predict(t.c, t.offsets, self.chain, self.mixer.w, sel, self.apm.t,
                                                      apm_ctx, idx)
        self._pending = (idx, st, sel, p_mix, apm_at, apm_w)
        return p

    def learn(self, bits: np.ndarray) -> None:
        """The bits of the batch last predicted."""
        self._learned.append((*self._pending, bits))

    def end_frame(self) -> None:
        if self._learned:
            idx, st, sel, p_mix, apm_at, apm_w, bits = (np.concatenate(a) for a in zip(*self._learned))
            self.mixer.update(st, sel, p_mix, bits)
            self.apm.update((apm_at, apm_w), bits)
            self.tables.update(idx, bits)
        self._learned.clear()


def _bucket(fraction_num: np.ndarray | int, total: int) -> int:
    """A fraction of changed positions -> 0..7 (finer near 0, where most frames are)."""
    return int(np.searchsorted(_RATE_EDGES, 64 * int(fraction_num) // max(total, 1), side="right"))


class _Model:
    """The state of one segment's coding. Encoder and decoder call the same methods in the same order.

    ``flags`` and ``tree`` return P(1) * 2**16 for a batch of decisions, ``flag_bits`` and ``tree_bits`` take that
    batch's bits; ``end_frame`` updates the counts with the frame's decisions and moves the frame context on.
    """

    def __init__(self, codebook_size: int, grid: tuple[int, int], rates: tuple[int, int] = RATES[VERSION]):
        h, w = grid
        flag_rate, tree_rate = rates
        self.k, self.n = codebook_size, h * w
        self.depth = max(1, (codebook_size - 1).bit_length())  # tree levels: bits of the largest token
        self.none = 1 << self.depth  # "no token" (before a segment's first frame, off the grid): no prefix matches
        # Neighbour indexes, with self.n pointing at a padding slot (never "changed", token ``none``).
        self.phase_a, self.phase_b, self.cross, self.ring = adaptive_v1.grid_neighbours(grid)
        self.frame_counts = _Tables([3], [255])
        # Flags: now, (now, age, around), that at each position, the token held, the frame's change rate, the
        # pattern of the 4 neighbours' changes, the token held with its age.
        self.flag_stage = _Stage([6, _O1, _O1 * self.n, 1 << HASH_BITS, 9 * 6 * 7, 2 * 16 * 7 * 6, 1 << HASH_BITS],
                                 [4095, 1023, 255, 255, 1023, 1023, 255], FLAG_STRENGTH, 6 * 9, 6 * 7, flag_rate)
        d = self.depth
        # Tree: node, previous token's top bits, previous token, previous two, where the prefix stands against the
        # previous token's, how many candidate tokens (neighbours' previous, this position's one before) agree,
        # the node at this position.
        self.tree_stage = _Stage([1 << d, 1 << HASH_BITS, 1 << HASH_BITS, 1 << HASH_BITS, d * 6 * 4, d * 6 * 6 * 2,
                                  1 << HASH_BITS], [1023, 255, 255, 255, 1023, 1023, 255], TREE_STRENGTH, d * 6, d * 6,
                                 tree_rate)
        self.prev = np.full(self.n + 1, self.none, np.int64)  # tokens of frame t-1 (N + padding slot), and t-2
        self.prev2 = np.full(self.n + 1, self.none, np.int64)
        self.frames = 0
        self.changed = np.zeros(self.n + 1, np.int64)  # changes at t-1 (padding slot last), known from t = 2 on
        self.age = np.zeros(self.n, np.int64)  # frames since each position last changed
        self.last_repeat = 2  # did frame t-1 repeat t-2: 0, 1, 2 unknown
        self.last_rate = 8  # the change-rate bucket of frame t-1, 8 unknown

    # ---- step 1: the frame flag -----------------------------------------------------------------------------
    def frame_flag(self) -> np.ndarray:
        n, ones = self.frame_counts.counts(np.array([[self.last_repeat]]))
        return _clip(kt(ones[:, 0], n[:, 0]), FRAME_P_MIN, ONE - FRAME_P_MIN)

    # ---- step 2: per-position flags ---------------------------------------------------------------------------
    def flags(self, phase: str, changed_now: np.ndarray) -> np.ndarray:
        """P(changed) for the phase's positions ("a" or "b"); ``changed_now`` (N + 1,) this frame's changes, phase
        A's filled in for phase B."""
        # Per position: now (phase A: 5, unknown; phase B: how many of its 4 neighbours changed in this frame),
        # age (the bucket of frames since it last changed), ring (how many of its 8 neighbours changed in the last
        # frame), o1 = (now, age, ring), the token held; the frame's change rate (phase A: the last frame's; phase B:
        # phase A's in this frame) and the pattern of the 4 neighbours' changes (last frame's, or this frame's).
        # (m, 7) contexts: now, o1, (o1, position), hashed (token, now), (rate, now, age), (pattern, age, ring),
        # hashed (token, age, ring); the mixer's weights by (now, rate), the APM's row by (now, age).
        b = phase == "b"
        pos = self.phase_b if b else self.phase_a
        rate = _bucket(changed_now[self.phase_a].sum(), len(self.phase_a)) if b else self.last_rate
        idx, sel, apm_ctx = kernels.flag_contexts(pos, self.cross, self.ring, self.changed, changed_now, b,
                                                  self.frames >= 2, rate, self.prev, self.age, _FLAG_SALTS)
        return self.flag_stage.predict(idx, sel, apm_ctx)

    def flag_bits(self, bits: np.ndarray) -> None:
        """The bits of the batch last returned by ``flags``."""
        self.flag_stage.learn(bits)

    # ---- step 3: the changed tokens, bit by bit ---------------------------------------------------------------
    def tree_begin(self, pos: np.ndarray) -> None:
        """Start the tree of a frame's changed positions ``pos``: what ``tree`` needs at every level."""
        prev, prev2 = self.prev[pos], self.prev2[pos]
        self._prev = prev
        # Candidates: the 4 neighbours' previous tokens and this position's one before the last (motion, flicker).
        self._cand = np.concatenate([self.prev[self.cross[pos]], prev2[:, None]], 1)  # (m, 5)
        # The hashed contexts' keys that do not change with the level: previous token, previous two, position.
        pair = prev2 * (self.none + 1) + prev
        self._keys = np.stack([prev, pair, pos], 1).astype(np.uint64) << np.uint64(self.depth + 1)  # (m, 3)

    def tree(self, level: int, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the tokens at ``tree_begin``'s positions whose top ``level`` bits are ``prefix``: which have a real
        choice at this level (mask), and P(next bit = 1) for those."""
        # The node (prefix | 1 << level); where the prefix stands against the previous token's top bits (-2..2,
        # 5 = no previous token), and the previous token's next two bits: FSQ tokens move by small steps of their
        # channels, which are bit fields; how many candidates share the prefix and go on with a 1, with a 0.
        # Hashed: the previous token's top bits at this level (tokens near it in the codebook share these
        # statistics), the previous token, the previous two, the position; each with the node.
        # (m, 7) contexts: node, hashed top bits, hashed previous, hashed previous two, (level, where, next two),
        # (level, ones, zeros, where == 0), hashed position; sel (level, where) picks weights and APM row.
        coded, idx, sel = kernels.tree_contexts(level, self.depth, self.k, prefix, self._prev, self._cand,
                                                self._keys, _TREE_SALTS)
        return coded, self.tree_stage.predict(idx, sel, sel)

    def tree_bits(self, bits: np.ndarray) -> None:
        self.tree_stage.learn(bits)

    # ---- the frame's end --------------------------------------------------------------------------------------
    def end_frame(self, tokens: np.ndarray, repeated: bool | None) -> None:
        """Update counts with the frame's decisions; ``repeated``: the frame flag (None for a segment's first)."""
        self.flag_stage.end_frame()
        self.tree_stage.end_frame()
        if repeated is not None:
            self.frame_counts.update(np.array([[self.last_repeat]]), np.array([int(repeated)]))
            self.last_repeat = int(repeated)
            changed = tokens != self.prev[: self.n]
            self.changed[: self.n] = changed
            self.age = np.where(changed, 0, self.age + 1)
            self.last_rate = _bucket(changed.sum(), self.n)
        self.prev2, self.prev = self.prev, np.append(tokens, self.none)
        self.frames += 1


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
        """The prior a segment header names: version 3, or 1 or 2 for segments written before it (``ValueError`` for
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
