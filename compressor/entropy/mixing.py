"""Integer logistic mixing and secondary estimation (APM/SSE) for the adaptive coder, as paq/lpaq do them.

Everything here is int64 arithmetic, so encoder and decoder compute the same probabilities on every machine:
probabilities are integers over 2**16, the logistic domain ("stretch") is integers over 2**8 in [-2047, 2047], and
``squash`` is lpaq's 33-point interpolation table, not a float ``exp``. ``>>`` is an arithmetic shift and ``//``
floor division, in numba as in numpy.

Updates are batched: a whole batch of decisions (one tree level, one checkerboard phase) is predicted with the same
weights, then the weights move by the batch's summed gradient. The classes hold the state; the batch loops, and the
squash and stretch tables they read, are compiled code in ``compressor.entropy.kernels``.
"""

from __future__ import annotations

import numpy as np

from compressor.entropy.kernels import ONE, SQUASH, STRETCH, mix, refine, squash, stretch  # noqa: F401 (API)
from compressor.entropy.kernels import apm_update, mixer_update


def kt(ones: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The KT estimate (ones + 1/2) / (n + 1) * 2**16 from integer counts."""
    return ((2 * ones.astype(np.int64) + 1) << 15) // (n.astype(np.int64) + 1)


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
        return mix(st, self.w, sel)

    def update(self, st: np.ndarray, sel: np.ndarray, p: np.ndarray, bits: np.ndarray) -> None:
        """Move the weights down the batch's code-length gradient: err * stretch, err in 12-bit units (int64
        arrays: st (m, inputs), sel, p, bits (m,))."""
        mixer_update(self.w, st, sel, p, bits, self.rate)


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
        out, at, w = refine(self.t, p, ctx)
        return out, (at, w)

    def update(self, state: tuple, bits: np.ndarray) -> None:
        apm_update(self.t, self.hits, *state, bits, self.limit)
