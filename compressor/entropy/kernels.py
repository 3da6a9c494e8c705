"""The adaptive model's (versions 2 to 4, ``compressor.entropy.adaptive_model``) batch loops, compiled with numba.

A batch is a few dozen decisions (one tree level, one checkerboard phase), so numpy spent more time starting its
~90 calls per batch than computing them; one compiled call per batch does the same integer arithmetic in one pass.
Each function does the integer arithmetic of the numpy code it replaced and must stay bit-exact: a change is a change
of the coded bytes (``tests/test_entropy_adaptive.py`` pins them). numba's ``>>`` on int64 is an
arithmetic shift and ``//`` floor division, as numpy's are; uint64 products wrap; stores into uint16 wrap.

Every compiled function, and every table it reads, lives in this one file: numba's cache (``cache=True``, files in
``__pycache__``) is invalidated when the file a function is defined in changes, not when a file it imports from does,
and global arrays are compiled in as constants.
"""

from __future__ import annotations

import numba
import numpy as np

ONE = 1 << 16  # probabilities are integers over 2**16
# lpaq1's squash at x = -2048, -1920, ..., 2048 (12-bit probabilities); interpolated to 16 bits below.
_KNOTS = np.array([1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994, 3348,
                   3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094], np.int64)
_X = np.arange(-2047, 2048)
SQUASH = (_KNOTS[(_X >> 7) + 16] * (128 - (_X & 127)) + _KNOTS[(_X >> 7) + 17] * (_X & 127) + 4) >> 3  # x+2047 -> p
# stretch(p) = the x whose squash is nearest p from above, on a grid of 4096 probabilities (p >> 4).
STRETCH = np.clip(np.searchsorted(SQUASH, np.arange(4096) * 16 + 8) - 2047, -2047, 2047).astype(np.int64)
P_MIN = 16  # each side of a decision keeps >= 16 / 2**16: a wrong guess costs at most 12 bits
HASH_BITS = 22  # tree contexts (token x node) are hashed into tables of 2**22 counts
GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing's multiplier, 2**64 / golden ratio
# Buckets of "frames since this position last changed": 0, 1, 2, 3-5, 6-11, 12+ (6 where it is unknown).
AGE_BUCKET = np.minimum(np.array([0, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4] + [5] * 244), 5)
NEIGHBOUR_BUCKET = np.array([0, 1, 2, 3, 3, 4, 4, 4, 4])  # changed among the 8 neighbours in the last frame

# Compiled on first use and cached beside this file (__pycache__), so later processes load it instead.
jit = numba.njit(cache=True)


# ---- mixing and APM (compressor.entropy.mixing holds their state) -------------------------------------------
@jit
def squash(x):
    """Logistic x / 256 -> P * 2**16, x clipped to [-2047, 2047] (an int64 or an int64 array)."""
    return SQUASH[np.minimum(np.maximum(x, -2047), 2047) + 2047]


@jit
def stretch(p):
    """P * 2**16 -> logit * 256 in [-2047, 2047] (the inverse of ``squash`` to its 12-bit resolution)."""
    return STRETCH[np.minimum(np.maximum(p, 0), ONE - 1) >> 4]


@jit
def mix(st: np.ndarray, w: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """st (m, inputs) stretched inputs, w (sets, inputs) weights * 2**16, sel (m,) -> squash(st . w[sel]) (m,)."""
    m, k = st.shape
    p = np.empty(m, np.int64)
    for i in range(m):
        dot = 0
        for j in range(k):
            dot += st[i, j] * w[sel[i], j]
        p[i] = squash(dot >> 16)
    return p


@jit
def mixer_update(w, st, sel, p, bits, rate):
    """w += rate * (summed err * st per set) // ((decisions of the set + 64) * 2**12), err in 12-bit units."""
    sets, k = w.shape
    grad, n = np.zeros((sets, k), np.int64), np.zeros(sets, np.int64)
    for i in range(len(bits)):
        err = ((bits[i] << 16) - p[i]) >> 4  # |err| < 2**12, |st| < 2**11: a product < 2**23
        n[sel[i]] += 1
        for j in range(k):
            grad[sel[i], j] += st[i, j] * err
    for s in range(sets):
        for j in range(k):
            w[s, j] += (grad[s, j] * rate) // ((n[s] + 64) << 12)


@jit
def refine(t: np.ndarray, p: np.ndarray, ctx: np.ndarray):
    """APM rows t (contexts, 33), P(1) * 2**16 (m,) in context ctx (m,) -> the refined P(1) * 2**16, and per
    decision the flat index of the cell below and the weight (of 128) of the cell above."""
    flat = t.reshape(-1)
    m = len(p)
    out, at, w = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64)
    for i in range(m):
        s = stretch(p[i]) + 2048  # 1 .. 4095
        at[i], w[i] = ctx[i] * 33 + (s >> 7), s & 127
        out[i] = (flat[at[i]] * (128 - w[i]) + flat[at[i] + 1] * w[i]) >> 7
    return out, at, w


@jit
def apm_update(t, hits, at, w, bits, limit):
    """Each cell hit moves by its hits' weighted mean error times n / (n + hits so far + 2)."""
    flat = t.reshape(-1)
    num, den = np.zeros(len(flat), np.int64), np.zeros(len(flat), np.int64)
    for above in range(2):  # the cells below, then above: the second pass reads what the first wrote
        for i in range(len(bits)):
            cell, weight = at[i] + above, w[i] if above else 128 - w[i]  # a cell learns in proportion to its share
            num[cell] += weight * (bits[i] * ONE - flat[cell])
            den[cell] += weight
        for i in range(len(bits)):
            cell = at[i] + above
            if den[cell]:  # once per cell: then zeroed (a weight of 0 is no hit)
                flat[cell] += num[cell] // (den[cell] + 128 * (hits[cell] + 2))
                hits[cell] = min(hits[cell] + (den[cell] >> 7), limit)
                num[cell] = den[cell] = 0


# ---- the model's context tables and a stage's prediction (compressor.entropy.adaptive_model) ----------------
@jit
def hash_index(key, salt):
    """A uint64 key -> an index into a 2**HASH_BITS table (Fibonacci hashing: the product wraps, deterministic)."""
    return np.int64(((np.uint64(key) ^ np.uint64(salt)) * GOLDEN) >> np.uint64(64 - HASH_BITS))


@jit
def update_counts(c, offsets, limits, idx, bits):
    """Add a frame's decisions to the counts c (contexts, 2) uint16 in place: idx (m, k) a context per table,
    offsets (k,) where each table starts in c, bits (m,). Then every context whose n passed its table's limit is
    halved, (c + 1) >> 1, once however many decisions it took: the sum first, so the order of decisions does not
    matter. (As numpy's ``c[at] += counts; c[at][over] = (c + 1) >> 1`` over ``at = np.unique(...)``, uint16 sums
    wrapping alike.)"""
    m, k = idx.shape
    over = np.empty(m * k, np.int64)  # the contexts over their limit, with repeats
    found = 0
    for i in range(m):
        for j in range(k):
            x = idx[i, j] + offsets[j]
            c[x, 0] += 1
            c[x, 1] += bits[i]
    for i in range(m):
        for j in range(k):
            x = idx[i, j] + offsets[j]
            if c[x, 0] > limits[j]:
                over[found] = x
                found += 1
    over = np.sort(over[:found])  # few (most contexts stay under their limit): sorted, each is halved once
    for i in range(found):
        x = over[i]
        if i == 0 or x != over[i - 1]:
            c[x, 0] = ((c[x, 0] + 1) & 0xFFFF) >> 1
            c[x, 1] = ((c[x, 1] + 1) & 0xFFFF) >> 1


@jit
def predict(c, offsets, chain, w, sel, apm, apm_ctx, idx):
    """A stage's P(1) * 2**16 for a batch: counts c and table offsets as in ``update_counts``, idx (m, k) a context
    per table, chain the blend's pseudo-counts (its first unused), mixer weights w (sets, k + 2) chosen by sel (m,),
    APM rows apm chosen by apm_ctx (m,). Returns p (m,) and what learning needs: the stretched inputs st (m, k + 2),
    the mixer's p_mix (m,), the APM's cells and weights (m,) each.

    Per decision: each table's KT estimate ((2 * ones + 1) << 15) // (n + 1); the chain blend from the first table's
    estimate, p = ((ones_j << 16) + chain_j * p) // (n_j + chain_j) over the next tables; the mixer over the
    stretched blend (clipped to [P_MIN, ONE - P_MIN]), each table's estimate and a bias of 256; the APM on the
    mixer's output; the mean of mixer and APM, clipped."""
    m, k = idx.shape
    st = np.empty((m, k + 2), np.int64)
    for i in range(m):
        blend = 0
        for j in range(k):
            x = idx[i, j] + offsets[j]
            n, ones = np.int64(c[x, 0]), np.int64(c[x, 1])
            est = ((2 * ones + 1) << 15) // (n + 1)
            if est >= ONE:  # ones > n: only counts that wrapped past 2**16 (numpy raised IndexError there too)
                raise IndexError("adaptive counts overflowed: more decisions per frame than uint16 counts hold")
            st[i, j + 1] = STRETCH[est >> 4]
            if j == 0:
                blend = est
            elif j < len(chain):
                blend = ((ones << 16) + chain[j] * blend) // (n + chain[j])
        st[i, 0] = STRETCH[min(max(blend, P_MIN), ONE - P_MIN) >> 4]
        st[i, k + 1] = 256
    p_mix = mix(st, w, sel)
    p_apm, at, aw = refine(apm, p_mix, apm_ctx)
    p = np.empty(m, np.int64)
    for i in range(m):
        p[i] = min(max((p_mix[i] + p_apm[i]) >> 1, P_MIN), ONE - P_MIN)  # (3 parts APM to 1 cost more on VQ val)
    return p, st, p_mix, at, aw


@jit
def tree_contexts(level, depth, codebook_size, prefix, prev, cand, keys, salts):
    """The token tree's contexts at ``level`` (see ``adaptive_model._Model.tree``) for tokens whose top ``level`` bits
    are prefix (m,): prev (m,) the previous token (``1 << depth``: none), cand (m, c) the candidate tokens, keys
    (m, 3) the hashed contexts' keys that do not change with the level (already shifted past the node's bits),
    salts (4,) one per hashed table. Returns coded (m,), whether the 1-branch holds a code, and for the coded ones
    the context per table idx (coded, 7) and the mixer's and APM's selector (coded,)."""
    m = len(prefix)
    below = depth - 1 - level
    none = 1 << depth
    coded = np.empty(m, np.bool_)
    for i in range(m):
        coded[i] = ((2 * prefix[i] + 1) << below) < codebook_size  # else the bit is 0
    idx, sel = np.empty((coded.sum(), 7), np.int64), np.empty(coded.sum(), np.int64)
    top_shift, node_shift = np.uint64(max(0, depth - level - 2)), np.uint64(depth + 1)
    r = 0
    for i in range(m):
        if not coded[i]:
            continue
        pre, prv = prefix[i], prev[i]
        node = pre | (1 << level)
        diff = 5 if prv == none else min(max(pre - (prv >> (below + 1)), -2), 2) + 2
        nxt = (prv >> (below - 1)) & 3 if below else (prv & 1) * 2
        ones = zeros = 0
        for j in range(cand.shape[1]):
            step = (cand[i, j] >> below) - 2 * pre
            ones += step == 1
            zeros += step == 0
        sel[r] = level * 6 + diff
        idx[r, 0] = node
        idx[r, 1] = hash_index((np.uint64(prv) >> top_shift << node_shift) | np.uint64(node), salts[0])
        idx[r, 2] = hash_index(np.uint64(keys[i, 0]) | np.uint64(node), salts[1])
        idx[r, 3] = hash_index(np.uint64(keys[i, 1]) | np.uint64(node), salts[2])
        idx[r, 4] = sel[r] * 4 + nxt
        idx[r, 5] = ((level * 6 + ones) * 6 + zeros) * 2 + (diff == 2)
        idx[r, 6] = hash_index(np.uint64(keys[i, 2]) | np.uint64(node), salts[3])
        r += 1
    return coded, idx, sel


@jit
def flag_contexts(pos, cross, ring, changed, changed_now, phase_b, known, rate, prev, age, salts):
    """The repeat flags' contexts (see ``adaptive_model._Model.flags``) at positions pos (m,): cross (N, 4) and ring
    (N, 8) each position's neighbours (N: a padding slot), changed (N + 1,) the last frame's changes, changed_now
    (N + 1,) this frame's so far (phase B: phase A's), known whether ``changed`` and age (N,) say anything yet (not
    before a segment's third frame), rate the change-rate bucket, prev (N + 1,) the last frame's tokens, salts (2,)
    one per hashed table. Returns the context per table idx (m, 7), the mixer's selector and the APM's row (m,)."""
    m, n = len(pos), len(age)
    idx = np.empty((m, 7), np.int64)
    sel, apm_ctx = np.empty(m, np.int64), np.empty(m, np.int64)
    for i in range(m):
        q = pos[i]
        # now: phase A 5 (unknown), phase B how many of the 4 neighbours (all phase A) changed in this frame;
        # pattern: which of them changed, in the last frame (phase A, 0..15) or in this one (phase B, 16..31).
        now, pattern = (0, 16) if phase_b else (5, 0)
        for j in range(4):
            flag = changed_now[cross[q, j]] if phase_b else changed[cross[q, j]]
            now += flag if phase_b else 0
            pattern += flag << j
        if known:
            around = 0
            for j in range(8):
                around += changed[ring[q, j]]
            a, rg = AGE_BUCKET[min(age[q], 255)], NEIGHBOUR_BUCKET[around]
        else:  # a segment's first two frames: nothing is known about earlier changes
            a, rg = 6, 5
        o1 = (now * 7 + a) * 6 + rg
        held = prev[q] * 8
        idx[i, 0], idx[i, 1], idx[i, 2] = now, o1, o1 * n + q
        idx[i, 3] = hash_index(held + now, salts[0])
        idx[i, 4] = (rate * 6 + now) * 7 + a
        idx[i, 5] = (pattern * 7 + a) * 6 + rg
        idx[i, 6] = hash_index((held + a) * 8 + rg, salts[1])
        sel[i], apm_ctx[i] = now * 9 + rate, now * 7 + a
    return idx, sel, apm_ctx
