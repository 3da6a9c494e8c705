"""Discrete bottlenecks: finite scalar quantization (FSQ, the default) and vector quantization (VQ).

Both map continuous latents ``z: (B, N, C)`` to integer ``tokens: (B, N)`` in ``[0, codebook_size)`` and back to
``codes: (B, N, C)``. Quantization runs in float32 even under autocast: rounding bf16 values would silently merge
neighbouring levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from compressor.codec.layers import captured_args
from compressor.codec.packing import from_digits, to_digits

# A world model wants a frame in a few hundred bytes: 128 tokens x 14 bits = 1792 bits = 224 bytes.
# 14 bits also keeps every token inside a uint16, which is how tokens are stored on disk.
MAX_CODEBOOK_SIZE = 2**14


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al., 2023): each channel is bounded and rounded to a few levels.

    There is no codebook to learn or collapse, so every code is reachable from the first step.

    Args:
        levels: number of levels per channel; the codebook size is their product (e.g. [8, 8, 8, 6, 5] = 15360).
    """

    def __init__(self, levels: list[int] = [8, 8, 8, 6, 5]):  # noqa: B006 - jsonargparse needs a literal default
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        if any(level < 2 for level in levels):
            raise ValueError(f"every FSQ level must be >= 2, got {levels}")
        self.levels = list(levels)
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        if self.codebook_size > MAX_CODEBOOK_SIZE:
            raise ValueError(f"FSQ codebook {self.codebook_size} exceeds {MAX_CODEBOOK_SIZE} (14-bit tokens)")
        self.register_buffer("_levels", torch.tensor(self.levels), persistent=False)

    def _bound(self, z: Tensor) -> Tensor:
        # Odd levels round symmetrically around 0; even levels need a half-step offset so that tanh's
        # range maps onto exactly `level` integers.
        half_l = (self._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """z: (B, N, C) -> codes (B, N, C) in [-1, 1], tokens (B, N), loss (always 0 for FSQ)."""
        with torch.autocast(z.device.type, enabled=False):
            bounded = self._bound(z.float())
            rounded = bounded + (bounded.round() - bounded).detach()  # straight-through estimator
            codes = rounded / (self._levels // 2)
            tokens = self.codes_to_tokens(codes)
        return {"codes": codes, "tokens": tokens, "loss": z.new_zeros((), dtype=torch.float32)}

    def codes_to_tokens(self, codes: Tensor) -> Tensor:
        """codes: (..., C) on the level grid -> tokens: (...) int64, a mixed-radix number."""
        digits = (codes * (self._levels // 2) + self._levels // 2).round().long()
        return from_digits(digits, self.levels)

    def tokens_to_codes(self, tokens: Tensor) -> Tensor:
        """tokens: (...) -> codes: (..., C) float32."""
        digits = to_digits(tokens, self.levels)
        return (digits - self._levels // 2).float() / (self._levels // 2)


class StandardizedFSQ(FSQ):
    """FSQ on inputs standardized per channel: batch statistics in training, running statistics at inference.

    With a free linear projection in front of the tanh bound, channels drift to one saturated end of their range,
    where tanh's gradient vanishes and they stay: in a ViT trained for 250 steps one channel sat at its lowest
    level for 95% of tokens and the joint token entropy was 6.3 of 13.9 bits. Standardizing keeps every channel
    spread over its levels, so each token carries close to its 14 bits. The running statistics are buffers, so
    they travel with the checkpoint and inference is deterministic; ``tokens_to_codes`` is unchanged.

    Args:
        levels: number of levels per channel, as for ``FSQ``.
        momentum: update rate of the running statistics.
    """

    def __init__(self, levels: list[int] = [8, 8, 8, 6, 5], momentum: float = 0.01):  # noqa: B006
        super().__init__(levels)
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.norm = nn.BatchNorm1d(len(levels), affine=False, momentum=momentum)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """z: (B, N, C) -> as ``FSQ.forward``."""
        with torch.autocast(z.device.type, enabled=False):
            z = rearrange(self.norm(rearrange(z.float(), "b n c -> b c n")), "b c n -> b n c")
        return super().forward(z)


class Whitening(nn.Module):
    """Decorrelating standardization of C channels: ``(z - mean)`` times the inverse Cholesky factor of their
    covariance, so the outputs have zero mean, unit variance and no correlation.

    Like ``BatchNorm1d``: batch statistics in training (gradients flow through them), running statistics (buffers,
    saved with the model) at inference, ``reset_running_stats`` and ``momentum=None`` for a cumulative average, which
    ``compressor.training.core.calibrate_ema`` uses to re-estimate them for the EMA weights.

    Args:
        num_features: channels C.
        momentum: update rate of the running statistics (None: cumulative average).
        eps: added to the covariance's diagonal.
    """

    def __init__(self, num_features: int, momentum: float | None = 0.01, eps: float = 1e-4):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_cov", torch.eye(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_cov.copy_(torch.eye(len(self.running_mean)))
        self.num_batches_tracked.zero_()

    def forward(self, z: Tensor) -> Tensor:
        """z: (M, C) float32 -> (M, C) whitened."""
        if self.training:
            mean = z.mean(0)
            centred = z - mean
            cov = centred.T @ centred / max(1, len(z) - 1)
            with torch.no_grad():
                self.num_batches_tracked += 1
                rate = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), rate)
                self.running_cov.lerp_(cov.detach(), rate)
        else:
            mean, cov = self.running_mean, self.running_cov
            centred = z - mean
        eye = torch.eye(len(cov), device=cov.device, dtype=cov.dtype)
        chol = torch.linalg.cholesky(cov + self.eps * eye)
        return torch.linalg.solve_triangular(chol, centred.T, upper=False).T


class WhitenedFSQ(FSQ):
    """FSQ on inputs whitened across channels (``Whitening``), not only standardized per channel.

    ``StandardizedFSQ`` keeps each channel off tanh's saturated ends, but channels that move together still waste
    codes: the conv stem's five channels (correlation -0.92) used 369 of 15,360 codes at 7.1 bits per token while
    their separate entropies summed to 12.6 bits. Decorrelating them before the bound spreads the tokens over the
    whole grid. ``tokens_to_codes`` is unchanged, so decoding costs nothing more.

    Args:
        levels: number of levels per channel, as for ``FSQ``.
        momentum: update rate of the running statistics.
    """

    def __init__(self, levels: list[int] = [8, 8, 8, 6, 5], momentum: float = 0.01):  # noqa: B006
        super().__init__(levels)
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        self.norm = Whitening(len(levels), momentum=momentum)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """z: (B, N, C) -> as ``FSQ.forward``."""
        with torch.autocast(z.device.type, enabled=False):
            B = len(z)
            z = rearrange(self.norm(rearrange(z.float(), "b n c -> (b n) c")), "(b n) c -> b n c", b=B)
        return super().forward(z)


class VQ(nn.Module):
    """Vector quantization with L2-normalised low-dimensional codes and dead-code restarts.

    Low-dimensional, normalised lookups (as in ViT-VQGAN / Improved VQGAN) keep a 16k codebook well used; codes
    that go unused for a while are restarted on random encoder outputs from the current batch.

    Args:
        codebook_size: number of codes (at most 16384).
        dim: code dimension.
        commitment_weight: weight of the encoder commitment term.
        dead_code_threshold: a code whose running usage falls below this many hits per batch is restarted.
        usage_decay: EMA decay of the per-code usage counts.
    """

    def __init__(
        self,
        codebook_size: int = 16384,
        dim: int = 8,
        commitment_weight: float = 0.25,
        dead_code_threshold: float = 0.01,
        usage_decay: float = 0.99,
    ):
        super().__init__()
        self.init_args = captured_args(locals())  # lets a checkpoint rebuild the model
        if not 2 <= codebook_size <= MAX_CODEBOOK_SIZE:
            raise ValueError(f"VQ codebook_size must be in [2, {MAX_CODEBOOK_SIZE}], got {codebook_size}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.commitment_weight = commitment_weight
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = usage_decay
        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, dim), dim=-1))
        # Start "alive" so restarts only hit codes that really stopped being used.
        self.register_buffer("usage", torch.ones(codebook_size))

    def _lookup(self, z: Tensor) -> Tensor:
        """z: (M, C) normalised -> tokens (M,)."""
        codebook = F.normalize(self.codebook, dim=-1)
        return (z @ codebook.t()).argmax(dim=-1)  # cosine similarity == -L2 distance on the sphere

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """z: (B, N, C) -> codes (B, N, C) unit-norm, tokens (B, N), loss (codebook + commitment)."""
        with torch.autocast(z.device.type, enabled=False):
            B = z.shape[0]
            z = F.normalize(z.float(), dim=-1)
            flat = rearrange(z, "b n c -> (b n) c")
            tokens = self._lookup(flat.detach())
            codes = F.normalize(self.codebook, dim=-1)[tokens]
            loss = F.mse_loss(codes, flat.detach()) + self.commitment_weight * F.mse_loss(flat, codes.detach())
            codes = flat + (codes - flat).detach()
            if self.training:
                self._restart_dead_codes(flat.detach(), tokens)
        return {
            "codes": rearrange(codes, "(b n) c -> b n c", b=B),
            "tokens": rearrange(tokens, "(b n) -> b n", b=B),
            "loss": loss,
        }

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor, tokens: Tensor) -> None:
        counts = torch.bincount(tokens, minlength=self.codebook_size).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        dead = (self.usage < self.dead_code_threshold).nonzero().squeeze(-1)
        if dead.numel() == 0:
            return
        picks = flat[torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)]
        picks = F.normalize(picks + 0.01 * torch.randn_like(picks), dim=-1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(picks, src=0)  # every rank must restart to the same codes
        self.codebook.data[dead] = picks
        self.usage[dead] = 1.0

    def tokens_to_codes(self, tokens: Tensor) -> Tensor:
        """tokens: (...) -> codes: (..., C) float32."""
        return F.normalize(self.codebook, dim=-1)[tokens.long()]
