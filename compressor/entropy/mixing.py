"""Integer logistic mixing and secondary estimation (APM/SSE) for the adaptive coder, as paq/lpaq do them.

Everything here is integer arithmetic on numpy int64 arrays, so encoder and decoder compute the same probabilities
on every machine: probabilities are integers over 2**16, the logistic domain ("stretch") is integers over 2**8
in [-2047, 2047], and ``squash`` is lpaq's 33-point interpolation table, not a float ``exp``. Sums of products
that go through ``np.bincount`` (float64) stay below 2**53, so they are exact whatever order numpy adds them in.

Updates are batched: a whole batch of decisions (one tree level, one checkerboard phase) is predicted with the same
weights, then the weights move by the batch's summed gradient. That is what keeps one numpy call per batch instead
of one Python step per decision.
"""

from __future__ import annotations

import numpy as np

ONE = 1 << 16  # probabilities are integers over 2**16
# lpaq1's squash at x = -2048, -1920, ..., 2048 (12-bit probabilities); interpolated to 16 bits below.
_KNOTS = np.array([1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994, 3348,
                   3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094], np.int64)
_X = np.arange(-2047, 2048)
SQUASH = (_KNOTS[(_X >> 7) + 16] * (128 - (_X & 127)) + _KNOTS[(_X >> 7) + 17] * (_X & 127) + 4) >> 3  # x+2047 -> p
# stretch(p) = the x whose squash is nearest p from above, on a grid of 4096 probabilities (p >> 4).
STRETCH = np.clip(np.searchsorted(SQUASH, np.arange(4096) * 16 + 8) - 2047, -2047, 2047).astype(np.int64)


def squash(x: np.ndarray) -> np.ndarray:
    """Logistic x / 256 -> P * 2**16, x clipped to [-2047, 2047]."""
    return SQUASH[np.minimum(np.maximum(x, -2047), 2047) + 2047]  # (np.clip's wrapper costs more than the work)


def stretch(p: np.ndarray) -> np.ndarray:
    """P * 2**16 -> logit * 256 in [-2047, 2047] (the inverse of ``squash`` to its 12-bit resolution)."""
    return STRETCH[np.minimum(np.maximum(p, 0), ONE - 1) >> 4]


def kt(ones: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The KT estimate (ones + 1/2) / (n + 1) * 2**16 from integer counts."""
    return ((2 * ones.astype(np.int64) + 1) << 15) // (n.astype(np.int64) + 1)


def _sums(groups: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Integer sums of ``values`` (m, k) per group -> (size, k): exact (float64 sums of integers below 2**53).
    One bincount over (group, column) pairs instead of one per column."""
    k = values.shape[1]
    cells = (groups[:, None] * k + np.arange(k)).ravel()
    return np.bincount(cells, weights=values.ravel(), minlength=size * k).reshape(size, k).astype(np.int64)


class Mixer:
    """p = squash(sum_i w_i * stretch(p_i)): one weight vector per selector value, trained online on coding cost.

    Args:
        inputs: predictions mixed (stretched), a bias input included by the caller if wanted.
        sets: weight vectors, chosen per decision by a small context.
        init: the initial weights * 2**16 (inputs,): e.g. all on the best single input, so a short segment starts
            where the unmixed model was.
        rate: the step; a batch of n decisions moves the weights (* 2**16) by rate * (summed gradient) / (n + 64) /
            2**12: about lpaq's step per decision at rate 1 for batches of ~64, a capped mean step for large ones.
    """

    def __init__(self, inputs: int, sets: int, init: list[int], rate: int):
        self.w = np.tile(np.array(init, np.int64), (sets, 1))
        self.sets, self.rate = sets, rate

    def predict(self, st: np.ndarray, sel: np.ndarray) -> np.ndarray:
        """st (m, inputs) stretched inputs, sel (m,) weight sets -> P(1) * 2**16 (m,)."""
        return squash(np.einsum("ij,ij->i", st, self.w[sel]) >> 16)

    def update(self, st: np.ndarray, sel: np.ndarray, p: np.ndarray, bits: np.ndarray) -> None:
        """Move the weights down the batch's code-length gradient: err * stretch, err in 12-bit units."""
        if not len(bits):
            return
        err = ((bits.astype(np.int64) << 16) - p) >> 4  # |err| < 2**12, |st| < 2**11: a product < 2**23
        grad = _sums(sel, st * err[:, None], self.sets)  # (sets, inputs), |sum| < 2**23 * m
        n = np.bincount(sel, minlength=self.sets).astype(np.int64)[:, None]
        self.w += (grad * self.rate) // ((n + 64) << 12)


class APM:
    """Secondary estimation: a context's table of 33 probabilities over the stretched input, interpolated, each
    pulled toward the observed bits (lpaq's APM, updated per batch).

    Args:
        contexts: table rows.
        limit: a cell averages its first hits, then follows its bits with a window of about ``limit`` hits (a batch
            of n hits moves it by n / (n + hits so far + 2) of the way).
    """

    def __init__(self, contexts: int, limit: int = 255):
        cells = squash((np.arange(33) - 16) * 128)
        self.t = np.tile(cells, (contexts, 1))
        self.hits = np.zeros(contexts * 33, np.int64)
        self.contexts, self.limit = contexts, limit

    def refine(self, p: np.ndarray, ctx: np.ndarray) -> tuple[np.ndarray, tuple]:
        """P(1) * 2**16 (m,) in context ctx (m,) -> refined P(1) * 2**16 and what ``update`` needs."""
        s = stretch(p) + 2048  # 1 .. 4095
        lo, w = s >> 7, s & 127
        at = ctx * 33 + lo  # the cell below, in the flat table
        flat = self.t.reshape(-1)
        out = (flat[at] * (128 - w) + flat[at + 1] * w) >> 7
        return out, (at, w)

    def update(self, state: tuple, bits: np.ndarray) -> None:
        if not len(bits):
            return
        at, w = state
        target = bits.astype(np.int64) * ONE
        flat = self.t.reshape(-1)
        size = self.contexts * 33
        for idx, weight in ((at, 128 - w), (at + 1, w)):  # each cell learns in proportion to its share
            num = _sums(idx, (weight * (target - flat[idx]))[:, None], size)[:, 0]
            den = np.bincount(idx, weights=weight, minlength=size).astype(np.int64)
            hit = np.flatnonzero(den)
            flat[hit] += num[hit] // (den[hit] + 128 * (self.hits[hit] + 2))
            self.hits[hit] = np.minimum(self.hits[hit] + (den[hit] >> 7), self.limit)
