"""Priors over a segment's tokens, from simple to strong, and how each one drives the rANS coder.

- ``StaticPrior`` (a): one distribution per token position over the whole codebook, counted on training tokens.
- ``FactorisedPrior`` (b): per position, an independent distribution per digit (FSQ channel, <= 8 symbols; any
  other codebook size is split into digits by ``coding.digit_radices``).
- ``TemporalPrior`` (c): a small convolutional network that predicts the whole frame's digit distributions from
  the previous ``context`` frames, channel by channel (channel c also sees the frame's channels < c).

Every prior codes a segment of tokens ``(T, N)`` into an ``Encoder`` and decodes it back from a ``Decoder``.
``bits(tokens)`` gives the ideal code length under the float probabilities, the number the coder approaches.
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.codec.packing import from_digits, to_digits
from compressor.entropy.coding import Decoder, Encoder, TableSet, quantized_cdfs

KINDS = ("static", "factorised", "temporal")
# Decoding work of one network pass over a frame, in symbols' worth (``Prior.work_per_frame``): what a frame of a
# small grid costs beyond its few symbols.
NETWORK_PASS_WORK = 16


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Prior(nn.Module):
    """What every prior shares: the token format it codes and an id that pins its exact parameters."""

    kind = ""
    coder = 1  # the segment header's coder byte (``stream.CODER_COMPRESSAI_RANS16``)

    def __init__(self, codebook_size: int, radices: list[int], grid: tuple[int, int], model_id: str):
        super().__init__()
        # Every token must have digits: a codebook larger than the digits cover would code wrong tokens.
        if math.prod(radices) < codebook_size or min(radices, default=0) < 2:
            raise ValueError(f"radices {list(radices)} do not cover a codebook of {codebook_size} codes "
                             "(see compressor.entropy.coding.digit_radices)")
        self.codebook_size, self.radices, self.grid = codebook_size, list(radices), tuple(grid)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.model_id = model_id
        self._tables: TableSet | None = None

    @property
    def init_args(self) -> dict:
        return {"codebook_size": self.codebook_size, "radices": self.radices, "grid": list(self.grid),
                "model_id": self.model_id}

    def prior_id(self) -> str:
        """16 hex digits of a hash over the kind, format and parameters: decoding needs exactly this prior."""
        h = hashlib.sha256(f"{self.kind}:{self.init_args}".encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def frame_alphabets(self) -> list[int]:
        """The alphabet sizes of the symbols that code one frame (here: one per digit of each token)."""
        return self.radices * self.num_tokens

    network_passes = 0  # network passes that decoding a frame takes
    # Work units a payload byte pays for (``stream.work_frames``). A crafted segment can buy this much decoding a
    # byte, a real one uses what its frames cost, so the rate is set from what real tokens cost a byte under each
    # kind: a prior that codes them in many bytes a frame (factorised: ~200) needs a lower rate than one that codes
    # them in few (temporal: 20-100), or a crafted segment costs 20x a real one's CPU per KB (issue 39;
    # reports/hostile/bench-crafted-streams). Real tokens pay 2.5x (factorised) to ~4x what they use at these rates.
    work_per_byte = 32

    def work_per_frame(self) -> int:
        """Decoding one frame's work, in units a payload byte pays for (``work_per_byte``): one a symbol,
        ``NETWORK_PASS_WORK`` a network pass."""
        return len(self.frame_alphabets()) + NETWORK_PASS_WORK * self.network_passes

    def check_tokens(self, tokens: Tensor) -> None:
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(f"tokens must be (T, {self.num_tokens}), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")

    def encode_payload(self, tokens: Tensor) -> bytes:
        """tokens (T >= 1, N) -> one rANS payload."""
        enc = Encoder()
        self.encode(tokens, enc)
        return enc.flush()

    def decode_payload(self, payload: bytes, num_frames: int) -> Tensor:
        return self.decode(Decoder(payload, num_frames * len(self.frame_alphabets())), num_frames)

    def load_state_dict(self, *args, **kwargs):
        self._tables = None  # tables are derived from the parameters
        return super().load_state_dict(*args, **kwargs)


class StaticPrior(Prior):
    """(a) p(token at position i) from counts, smoothed toward the all-position marginal."""

    kind = "static"
    work_per_byte = 8  # real tokens: ~200 bytes a frame of 640 symbols, still paying 2.5x what they use

    def __init__(self, codebook_size: int, radices: list[int], grid: tuple[int, int], model_id: str = ""):
        super().__init__(codebook_size, radices, grid, model_id)
        self.register_buffer("probs", torch.full((self.num_tokens, codebook_size), 1.0 / codebook_size))

    @torch.no_grad()
    def fit(self, tokens: Tensor, strength: float = 64.0) -> "StaticPrior":
        """tokens (T, N). Each position's counts get ``strength`` pseudo-counts of the (add-one) global marginal."""
        counts = torch.zeros(self.num_tokens, self.codebook_size, dtype=torch.float64)
        counts.scatter_add_(1, tokens.long().T, torch.ones(tokens.shape[::-1], dtype=torch.float64))
        marginal = (counts.sum(0) + 1) / (counts.sum() + self.codebook_size)
        probs = (counts + strength * marginal) / (counts.sum(1, keepdim=True) + strength)
        self.probs.copy_(probs.float())
        self._tables = None
        return self

    def frame_alphabets(self) -> list[int]:
        return [self.codebook_size] * self.num_tokens  # whole tokens, not digits

    def bits(self, tokens: Tensor) -> Tensor:
        """tokens (T, N) -> ideal bits per frame (T,)."""
        p = self.probs.gather(1, tokens.long().T).T
        return -torch.log2(p.double()).sum(1)

    def tables(self) -> TableSet:
        if self._tables is None:
            self._tables = TableSet(list(quantized_cdfs(self.probs)))
        return self._tables

    def encode(self, tokens: Tensor, enc: Encoder) -> None:
        self.check_tokens(tokens)
        idx = np.tile(np.arange(self.num_tokens), len(tokens))
        enc.encode(tokens.reshape(-1).numpy(), idx, self.tables())

    def decode(self, dec: Decoder, num_frames: int) -> Tensor:
        idx = np.tile(np.arange(self.num_tokens), num_frames)
        return torch.from_numpy(dec.decode(idx, self.tables())).reshape(num_frames, self.num_tokens)


class FactorisedPrior(Prior):
    """(b) p(token at i) = prod_c p_ic(digit c): small alphabets that 16-bit rANS codes with almost no loss."""

    kind = "factorised"
    work_per_byte = 8  # real tokens: ~200 bytes a frame of 640 symbols, still paying 2.5x what they use

    def __init__(self, codebook_size: int, radices: list[int], grid: tuple[int, int], model_id: str = ""):
        super().__init__(codebook_size, radices, grid, model_id)
        probs = torch.zeros(self.num_tokens, len(radices), max(radices))
        for c, r in enumerate(radices):
            probs[:, c, :r] = 1.0 / r
        self.register_buffer("probs", probs)  # (N, C, max radix), zero beyond each channel's radix

    @torch.no_grad()
    def fit(self, tokens: Tensor, pseudo_count: float = 0.5) -> "FactorisedPrior":
        digits = to_digits(tokens, self.radices)  # (T, N, C)
        probs = torch.zeros_like(self.probs, dtype=torch.float64)
        for c, r in enumerate(self.radices):
            counts = F.one_hot(digits[..., c], r).sum(0).double() + pseudo_count  # (N, r)
            probs[:, c, :r] = counts / counts.sum(1, keepdim=True)
        self.probs.copy_(probs.float())
        self._tables = None
        return self

    def bits(self, tokens: Tensor) -> Tensor:
        digits = to_digits(tokens, self.radices)  # (T, N, C)
        p = self.probs.unsqueeze(0).expand(len(tokens), -1, -1, -1).gather(3, digits.unsqueeze(-1)).squeeze(-1)
        return -torch.log2(p.double()).sum((1, 2))

    def tables(self) -> TableSet:
        if self._tables is None:  # table n * C + c codes channel c at position n
            self._tables = TableSet([quantized_cdfs(self.probs[n, c : c + 1, :r])[0]
                                     for n in range(self.num_tokens) for c, r in enumerate(self.radices)])
        return self._tables

    def encode(self, tokens: Tensor, enc: Encoder) -> None:
        self.check_tokens(tokens)
        digits = to_digits(tokens, self.radices).reshape(-1).numpy()
        enc.encode(digits, np.tile(np.arange(self.num_tokens * len(self.radices)), len(tokens)), self.tables())

    def decode(self, dec: Decoder, num_frames: int) -> Tensor:
        c = len(self.radices)
        idx = np.tile(np.arange(self.num_tokens * c), num_frames)
        digits = torch.from_numpy(dec.decode(idx, self.tables())).reshape(num_frames, self.num_tokens, c)
        return from_digits(digits, self.radices)


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(dim, dim, 3, padding=1), nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class TemporalPrior(Prior):
    """(c) p(frame t | frames t-K..t-1) = prod_c p(channel c of all tokens | previous frames, channels < c).

    One network pass per channel predicts that channel for the whole frame at once, so a frame costs
    ``len(radices)`` small convolutions rather than one step per token. Missing previous frames (the start of a
    segment) are a learned "missing" digit, so every segment decodes on its own.

    Args:
        context: previous frames seen.
        dim: feature width.
        depth: residual 3x3 conv blocks on the token grid.
    """

    kind = "temporal"

    def __init__(self, codebook_size: int, radices: list[int], grid: tuple[int, int], model_id: str = "",
                 context: int = 2, dim: int = 48, depth: int = 2, position: bool = False):
        super().__init__(codebook_size, radices, grid, model_id)
        self.context, self.dim, self.depth, self.position = context, dim, depth, position
        # Embedding row of (previous frame k, channel c, digit d); digit == radix means "missing".
        offsets = torch.tensor([0] + [r + 1 for r in radices[:-1]]).cumsum(0)
        self.register_buffer("_offsets", offsets, persistent=False)
        vocab = sum(r + 1 for r in radices)
        self.past = nn.Embedding(context * vocab, dim)
        self.current = nn.Embedding(vocab, dim)
        # Off by default: with a few thousand training frames a per-position embedding memorises the training
        # clips' layouts; without it the trunk is translation-equivariant and generalises to new clips.
        self.pos = nn.Parameter(torch.zeros(1, dim, *self.grid)) if position else None
        self.trunk = nn.Sequential(*[_Block(dim) for _ in range(depth)])
        # Most tokens repeat the previous frame's token (67-94% on the dashcam clips), which a sum of embeddings
        # expresses poorly. So each channel head also sees the previous frame's digit of its own channel, which of
        # the frame's earlier channels repeated theirs, and emits a gate added to the logit of "repeat".
        self.previous = nn.Embedding(vocab, dim)
        self.motion = nn.Linear(len(radices), dim)
        self.match = nn.Linear(len(radices) + 1, dim)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, r + 1, 1)) for r in radices)
        self._vocab = vocab
        self.network_passes = 1 + len(radices)  # the trunk, then a head per channel

    @property
    def init_args(self) -> dict:
        return {**super().init_args, "context": self.context, "dim": self.dim, "depth": self.depth,
                "position": self.position}

    def _grid(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, D, h, w), tokens row-major on the grid
        return x.transpose(1, 2).reshape(x.shape[0], self.dim, *self.grid)

    def features(self, past: Tensor) -> Tensor:
        """past digits (B, K, N, C), radix = missing -> trunk features (B, D, h, w)."""
        k = torch.arange(self.context, device=past.device).view(1, -1, 1, 1) * self._vocab
        e = self.past(past + self._offsets + k).sum((1, 3))  # (B, N, D)
        if self.context > 1:  # where the last two frames differ: how much this part of the picture moves
            radix = torch.tensor(self.radices, device=past.device)
            seen = (past[:, -1] != radix) & (past[:, -2] != radix)
            e = e + self.motion(((past[:, -1] != past[:, -2]) & seen).float())
        x = self._grid(e)
        return self.trunk(x + self.pos if self.pos is not None else x)

    def channel_logits(self, h: Tensor, past: Tensor, current: Tensor, c: int) -> Tensor:
        """Channel c's logits (B, N, radix_c) from the features, the past digits (B, K, N, C) and the frame's
        digits (B, N, C) of channels < c (later channels are ignored)."""
        last = past[:, -1]  # (B, N, C), the previous frame
        repeated = (current[..., :c] == last[..., :c]).float()  # (B, N, c); flags below: (B, N, C + 1)
        flags = torch.cat([F.pad(repeated, (0, len(self.radices) - c)), repeated.prod(-1, keepdim=True)], -1)
        e = self.match(flags) + self.previous(last[..., c] + self._offsets[c])
        if c:
            e = e + self.current(current[..., :c] + self._offsets[:c]).sum(2)
        out = self.heads[c](h + self._grid(e)).flatten(2).transpose(1, 2)  # (B, N, radix_c + 1)
        repeat = F.one_hot(last[..., c], self.radices[c] + 1)[..., :-1]  # zero when the previous frame is missing
        return out[..., :-1] + out[..., -1:] * repeat

    def forward(self, past: Tensor, current: Tensor) -> list[Tensor]:
        """Teacher-forced training pass: past (B, K, N, C), current (B, N, C) -> per channel logits (B, N, r_c)."""
        h = self.features(past)
        return [self.channel_logits(h, past, current, c) for c in range(len(self.radices))]

    def nll_bits(self, past: Tensor, current: Tensor) -> Tensor:
        """Ideal bits per frame (B,) of ``current`` given ``past``."""
        logits = self(past, current)
        nll = sum(F.cross_entropy(lg.transpose(1, 2), current[..., c], reduction="none").sum(1)
                  for c, lg in enumerate(logits))
        return nll / math.log(2)

    def past_of(self, digits: Tensor, t: int) -> Tensor:
        """The ``context`` frames before frame t of a segment's digits (T, N, C), missing ones flagged: (1, K, N, C)."""
        missing = torch.tensor(self.radices).expand(self.num_tokens, -1)
        frames = [digits[t - k] if t - k >= 0 else missing for k in range(self.context, 0, -1)]
        return torch.stack(frames).unsqueeze(0)

    @torch.no_grad()
    def bits(self, tokens: Tensor) -> Tensor:
        digits = to_digits(tokens, self.radices)
        past = torch.cat([self.past_of(digits, t) for t in range(len(tokens))])
        return self.nll_bits(past, digits).double()

    # Encoder and decoder evaluate the network through the same per-frame calls (batch of one) on one CPU thread,
    # so that the float probabilities, and so the integer CDFs, are identical on both sides whatever the
    # process's thread count (DataLoader workers run with one thread, an encode job with many).
    def frame_probs(self, h: Tensor, past: Tensor, current: Tensor, c: int) -> Tensor:
        """Channel c's probabilities (N, radix_c) for one frame: features (1, D, h, w), digits (1, ...)."""
        return torch.softmax(self.channel_logits(h, past, current, c).float(), -1)[0]

    def _frame_tables(self, h: Tensor, past: Tensor, current: Tensor, c: int) -> TableSet:
        return TableSet(list(quantized_cdfs(self.frame_probs(h, past, current, c))))

    @torch.no_grad()
    def encode(self, tokens: Tensor, enc: Encoder) -> None:
        self.check_tokens(tokens)
        with one_thread():
            self._encode(tokens, enc)

    def _encode(self, tokens: Tensor, enc: Encoder) -> None:
        digits = to_digits(tokens, self.radices)
        idx = np.arange(self.num_tokens)
        for t in range(len(tokens)):
            past = self.past_of(digits, t)
            h = self.features(past)
            for c in range(len(self.radices)):
                enc.encode(digits[t, :, c].numpy(), idx, self._frame_tables(h, past, digits[t : t + 1], c))

    @torch.no_grad()
    def decode(self, dec: Decoder, num_frames: int) -> Tensor:
        with one_thread():
            return self._decode(dec, num_frames)

    def _decode(self, dec: Decoder, num_frames: int) -> Tensor:
        digits = torch.zeros(num_frames, self.num_tokens, len(self.radices), dtype=torch.long)
        idx = np.arange(self.num_tokens)
        for t in range(num_frames):
            past = self.past_of(digits, t)
            h = self.features(past)
            for c in range(len(self.radices)):
                digits[t, :, c] = torch.from_numpy(dec.decode(idx, self._frame_tables(h, past, digits[t : t + 1], c)))
        return from_digits(digits, self.radices)


PRIORS = {cls.kind: cls for cls in (StaticPrior, FactorisedPrior, TemporalPrior)}
