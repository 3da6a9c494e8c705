"""Version 1 of the adaptive prior's model, kept so that segments coded with it (compressor before adaptive
version 2) still decode. Frozen: a change here changes the bytes that ``tests/test_entropy_adaptive.py`` pins.

``compressor.entropy.adaptive`` is the driver all versions share (the model of versions 2 to 4 is
``compressor.entropy.adaptive_model``); a segment header's version picks the model (``AdaptivePrior.from_id``; ``AdaptivePrior(..., version=1)`` writes version 1, for
tests). Version 1 blends context orders the way PPM and CTW do: a KT
estimate over the coarsest context, then each finer context's counts with ``strength`` pseudo-counts of the
coarser estimate, ``p_k = (ones_k * 2**16 + strength_k * p_{k-1}) // (n_k + strength_k)``; counts are halved past a
limit and updated once per frame. Version 2 mixes more contexts with a logistic mixer and an APM.
"""

from __future__ import annotations

import numpy as np

VERSION = 1
ONE = 1 << 16  # probabilities are integers over 2**16
P_MIN = 16  # each side of a decision keeps >= 16 / 2**16: a wrong guess costs at most 12 bits
FRAME_P_MIN = 1 << 10  # the frame flag's less likely side keeps >= 2**-6, which bounds frames per payload byte
HASH_BITS = 22  # tree contexts (token x node) are hashed into tables of 2**22 counts
TREE_STRENGTH = (0, 2, 2, 2)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Buckets of "frames since this position last changed" (the last bucket: unknown, a segment's second frame).
_AGE_BUCKET = np.minimum(np.array([0, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4] + [5] * 244), 5)
_NEIGHBOUR_BUCKET = np.array([0, 1, 2, 3, 3, 4, 4, 4, 4])  # changed among the 8 neighbours in the last frame


class _Counts:
    """Binary counts (n, ones) per context, halved past ``limit`` so that old statistics fade."""

    def __init__(self, size: int, limit: int):
        self.n, self.ones, self.limit = np.zeros(size, np.int32), np.zeros(size, np.int32), limit

    def update(self, idx: np.ndarray, bits: np.ndarray) -> None:
        """Add a frame's decisions (a context may occur many times: sums, so their order does not matter)."""
        at, where = np.unique(idx, return_inverse=True)  # (np.add.at is ~100x slower on numpy 1.x)
        self.n[at] += np.bincount(where, minlength=len(at)).astype(np.int32)
        self.ones[at] += np.bincount(where, weights=bits, minlength=len(at)).astype(np.int32)
        over = at[self.n[at] > self.limit]
        if len(over):
            self.n[over] = (self.n[over] + 1) >> 1
            self.ones[over] = (self.ones[over] + 1) >> 1


def _blend(orders: list[tuple[_Counts, np.ndarray, int]]) -> np.ndarray:
    """P(bit = 1) * 2**16 (int64) from contexts coarse to fine: [(counts, context index, strength), ...]."""
    counts, idx, _ = orders[0]
    p = ((2 * counts.ones[idx].astype(np.int64) + 1) << 15) // (counts.n[idx] + 1)  # KT: (ones + 1/2) / (n + 1)
    for counts, idx, strength in orders[1:]:
        p = ((counts.ones[idx].astype(np.int64) << 16) + strength * p) // (counts.n[idx] + strength)
    return np.clip(p, P_MIN, ONE - P_MIN)


def _hash(key: np.ndarray) -> np.ndarray:
    """uint64 keys -> indexes into a 2**HASH_BITS table (Fibonacci hashing; uint64 products wrap, deterministic)."""
    return ((key.astype(np.uint64) * _GOLDEN) >> np.uint64(64 - HASH_BITS)).astype(np.int64)


def grid_neighbours(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The checkerboard phases of an (h, w) grid, row-major, and each position's 4 and 8 neighbours (N, 4), (N, 8),
    with N (= h * w) standing for a padding slot off the grid. Both model versions use this geometry."""
    h, w = grid
    n = h * w
    rows, cols = np.divmod(np.arange(n), w)

    def around(offsets):
        out = np.full((n, len(offsets)), n)
        for j, (dr, dc) in enumerate(offsets):
            ok = (rows + dr >= 0) & (rows + dr < h) & (cols + dc >= 0) & (cols + dc < w)
            out[ok, j] = ((rows + dr) * w + cols + dc)[ok]
        return out

    return (np.flatnonzero((rows + cols) % 2 == 0), np.flatnonzero((rows + cols) % 2 == 1),
            around([(-1, 0), (1, 0), (0, -1), (0, 1)]),
            around([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]))


class _Model:
    """The state of one segment's coding. Encoder and decoder call the same methods in the same order.

    ``flags`` and ``tree`` return P(1) * 2**16 for a batch of decisions; ``end_frame`` updates the counts with the
    frame's decisions and moves the frame context on.
    """

    def __init__(self, codebook_size: int, grid: tuple[int, int]):
        h, w = grid
        self.k, self.n = codebook_size, h * w
        self.depth = max(1, (codebook_size - 1).bit_length())  # tree levels: bits of the largest token
        self.phase_a, self.phase_b, cross, self.ring = grid_neighbours(grid)
        self.cross_b = cross[self.phase_b]
        self.frame_counts = _Counts(3, 255)
        self.flag_counts = [_Counts(6, 4095), _Counts(6 * 7 * 6, 1023), _Counts(6 * 7 * 6 * self.n, 255)]
        self.tree_counts = [_Counts(1 << self.depth, 1023)] + [_Counts(1 << HASH_BITS, 255) for _ in range(3)]
        self.prev: np.ndarray | None = None  # tokens of frame t-1 (N,), and t-2
        self.prev2: np.ndarray | None = None
        self.changed = np.zeros(self.n + 1, np.int64)  # changes at t-1 (padding slot last), known from t = 2 on
        self.age = np.zeros(self.n, np.int64)  # frames since each position last changed
        self.last_repeat = 2  # did frame t-1 repeat t-2: 0, 1, 2 unknown
        self._flag_updates: list[tuple[list[np.ndarray], np.ndarray]] = []
        self._tree_updates: list[tuple[list[np.ndarray], np.ndarray]] = []

    # ---- step 1: the frame flag -----------------------------------------------------------------------------
    def frame_flag(self) -> np.ndarray:
        c = self.frame_counts
        p = ((2 * c.ones[self.last_repeat:self.last_repeat + 1].astype(np.int64) + 1) << 15) // (
            c.n[self.last_repeat] + 1)
        return np.clip(p, FRAME_P_MIN, ONE - FRAME_P_MIN)

    # ---- step 2: per-position flags ---------------------------------------------------------------------------
    def flags(self, phase: str, changed_now: np.ndarray | None = None) -> np.ndarray:
        """P(changed) for the phase's positions; phase B needs ``changed_now`` (N + 1,), phase A's flags filled in."""
        pos = self.phase_a if phase == "a" else self.phase_b
        if phase == "a":
            now = np.full(len(pos), 5)
        else:
            now = changed_now[self.cross_b].sum(1)
        if self.prev2 is None:  # frame 1: nothing is known about earlier changes
            age, around = np.full(len(pos), 6), np.full(len(pos), 5)
        else:
            age = _AGE_BUCKET[np.minimum(self.age[pos], 255)]
            around = _NEIGHBOUR_BUCKET[self.changed[self.ring[pos]].sum(1)]
        o1 = (now * 7 + age) * 6 + around
        idx = [now, o1, o1 * self.n + pos]
        self._flag_updates.append((idx, None))
        return _blend([(c, i, s) for c, i, s in zip(self.flag_counts, idx, (0, 4, 2))])

    def flag_bits(self, bits: np.ndarray) -> None:
        """The bits of the batch last returned by ``flags`` (for the update at the frame's end)."""
        self._flag_updates[-1] = (self._flag_updates[-1][0], bits)

    # ---- step 3: the changed tokens, bit by bit ---------------------------------------------------------------
    def tree_begin(self, pos: np.ndarray) -> None:
        """Start the tree of a frame's changed positions ``pos``."""
        self._pos = pos

    def tree(self, level: int, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the tokens at ``tree_begin``'s positions whose top ``level`` bits are ``prefix``: which have a real
        choice at this level (mask), and P(next bit = 1) for those."""
        pos = self._pos
        below = self.depth - 1 - level
        coded = ((2 * prefix + 1) << below) < self.k  # else the 1-branch holds no code: the bit is 0
        node = (prefix[coded] | (1 << level)).astype(np.int64)
        prev = self.prev[pos[coded]] if self.prev is not None else np.full(len(node), self.k)
        prev2 = self.prev2[pos[coded]] if self.prev2 is not None else np.full(len(node), self.k)
        shift = np.uint64(self.depth + 1)
        node64 = node.astype(np.uint64)
        # The previous token's top bits at this level: tokens near it in the codebook share these statistics.
        coarse = prev.astype(np.uint64) >> np.uint64(max(0, self.depth - level - 2))
        key1 = (coarse << shift | node64) * np.uint64(3) + np.uint64(1)
        key2 = prev.astype(np.uint64) << shift | node64
        key3 = (prev2.astype(np.uint64) * np.uint64(self.k + 1) + prev.astype(np.uint64)) << shift | node64
        idx = [node, _hash(key1), _hash(key2), _hash(key3 ^ np.uint64(0x5BD1E995))]
        self._tree_updates.append((idx, None))
        return coded, _blend([(c, i, s) for c, i, s in zip(self.tree_counts, idx, TREE_STRENGTH)])

    def tree_bits(self, bits: np.ndarray) -> None:
        self._tree_updates[-1] = (self._tree_updates[-1][0], bits)

    # ---- the frame's end --------------------------------------------------------------------------------------
    def end_frame(self, tokens: np.ndarray, repeated: bool | None) -> None:
        """Update counts with the frame's decisions; ``repeated``: the frame flag (None for a segment's first)."""
        for updates, tables in ((self._flag_updates, self.flag_counts), (self._tree_updates, self.tree_counts)):
            if updates:
                bits = np.concatenate([b for _, b in updates])
                for order, counts in enumerate(tables):
                    counts.update(np.concatenate([idx[order] for idx, _ in updates]), bits)
            updates.clear()
        if repeated is not None:
            self.frame_counts.update(np.array([self.last_repeat]), np.array([int(repeated)]))
            self.last_repeat = int(repeated)
            changed = tokens != self.prev
            self.changed[: self.n] = changed
            self.age = np.where(changed, 0, self.age + 1)
        self.prev2, self.prev = self.prev, tokens
