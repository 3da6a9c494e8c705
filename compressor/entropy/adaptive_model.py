"""The adaptive prior's model (versions 2 to 4): the probability of each binary decision a frame is coded as, from
counts, mixers and APMs that encoder and decoder update alike. ``compressor.entropy.adaptive`` drives it (which
decisions, in which order, and the coder); version 1's model is ``compressor.entropy.adaptive_v1``.

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

Any change here changes the coded bytes: bump ``adaptive.VERSION`` (``tests/test_entropy_adaptive.py`` pins them).
"""

from __future__ import annotations

import numpy as np

from compressor.entropy import adaptive_v1, kernels
from compressor.entropy.kernels import HASH_BITS
from compressor.entropy.mixing import APM, ONE, Mixer, kt

FRAME_P_MIN = 1 << 10  # the frame flag's less likely side keeps >= 2**-6, which bounds frames per payload byte
TREE_STRENGTH = (0, 2, 2, 2)  # the chain blend's pseudo-counts (its first order takes none)
FLAG_STRENGTH = (0, 4, 2)
_FLAG_SALTS = np.array([1, 2], np.uint64)  # one salt per hashed table, so that their keys do not collide alike
_TREE_SALTS = np.array([3, 4, 5, 6], np.uint64)
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

    Args:
        codebook_size: codes; grid: the token grid (h, w).
        rates: the mixers' steps (flags, tree): the only difference between versions 2 and 3 (``adaptive.RATES``).
    """

    def __init__(self, codebook_size: int, grid: tuple[int, int], rates: tuple[int, int]):
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
