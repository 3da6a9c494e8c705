"""The world model's output heads: a transformer state h (..., D) -> log p(token), argmax, samples.

- ``FullHead``: one softmax over the codebook (15,360 logits).
- ``DigitHead`` (``digits``): one softmax per FSQ digit (8+8+8+6+5 = 35 logits), the digits *independent* given
  the state: log p(token) = sum of the digits' log-probs, a proper distribution over the codebook.
- ``ARDigitHead`` (``ar-digits``): the digits one after another, each given the state and the exact prefix of the
  digits before it: exact like the full softmax, about as cheap in training as the digits head. Its argmax is an
  exact branch-and-bound search over digit prefixes and its samples at temperature 1 are ancestral (one digit at a
  time), so neither enumerates the 15,360 codes; other temperatures temper the *joint* and enumerate it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.codec.packing import from_digits, to_digits


class FullHead(nn.Module):
    """One softmax over the whole codebook. h: (..., D) -> logits (..., V)."""

    def __init__(self, dim: int, codebook_size: int, radices: list[int]):
        super().__init__()
        self.proj = nn.Linear(dim, codebook_size)

    def log_probs(self, h: Tensor, tokens: Tensor) -> Tensor:
        """h (..., D), tokens (...) -> log p(token) in nats (...)."""
        return self.candidate_log_probs(h, tokens.unsqueeze(-1)).squeeze(-1)

    def candidate_log_probs(self, h: Tensor, candidates: Tensor) -> Tensor:
        """h (..., D), candidates (..., K) -> log p of each candidate (..., K): one softmax a state, not K."""
        return F.log_softmax(self.proj(h).float(), -1).gather(-1, candidates)

    def argmax(self, h: Tensor) -> Tensor:
        return self.proj(h).argmax(-1)

    def sample(self, h: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        probs = F.softmax(self.proj(h).float() / temperature, -1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def full_log_probs(self, h: Tensor) -> Tensor:
        """h (..., D) -> log p over every code (..., V)."""
        return F.log_softmax(self.proj(h).float(), -1)


class DigitHead(nn.Module):
    """Factorised FSQ head: one independent softmax per digit. log p(token) = sum_c log p_c(digit_c)."""

    def __init__(self, dim: int, codebook_size: int, radices: list[int]):
        super().__init__()
        if math.prod(radices) != codebook_size:
            raise ValueError(f"radices {radices} multiply to {math.prod(radices)}, not the codebook {codebook_size}")
        self.radices = list(radices)
        self.proj = nn.Linear(dim, sum(radices))

    def _digit_log_probs(self, h: Tensor) -> list[Tensor]:
        return [F.log_softmax(z.float(), -1) for z in self.proj(h).split(self.radices, -1)]  # C x (..., r_c)

    def log_probs(self, h: Tensor, tokens: Tensor) -> Tensor:
        return self.candidate_log_probs(h, tokens.unsqueeze(-1)).squeeze(-1)

    def candidate_log_probs(self, h: Tensor, candidates: Tensor) -> Tensor:
        """h (..., D), candidates (..., K) -> log p of each candidate (..., K)."""
        digits = to_digits(candidates, self.radices)  # (..., K, C)
        return sum(lp.gather(-1, digits[..., c]) for c, lp in enumerate(self._digit_log_probs(h)))

    def argmax(self, h: Tensor) -> Tensor:
        # Independent digits: the most likely token is every digit's most likely level.
        digits = torch.stack([z.argmax(-1) for z in self.proj(h).split(self.radices, -1)], -1)
        return from_digits(digits, self.radices)

    def sample(self, h: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        digits = [torch.multinomial(F.softmax(z.float() / temperature, -1), 1, generator=generator).squeeze(-1)
                  for z in self.proj(h).split(self.radices, -1)]
        return from_digits(torch.stack(digits, -1), self.radices)

    def full_log_probs(self, h: Tensor) -> Tensor:
        digits = to_digits(torch.arange(math.prod(self.radices), device=h.device), self.radices)  # (V, C)
        return sum(lp[..., digits[:, c]] for c, lp in enumerate(self._digit_log_probs(h)))  # (..., V)


class ARDigitHead(nn.Module):
    """Autoregressive FSQ-digit head: p(token) = prod_c p(d_c | h, d_0..d_{c-1}), exact (no independence between
    digits), at a fraction of the full softmax's cost.

    Digit c (least significant first) sees the transformer state and the exact *prefix* of the digits before it
    (the value d_0 + r_0 d_1 + ..., one learned embedding per prefix: 1 + 8 + 64 + 512 + 3,072 rows for the
    recipe's levels): hidden_c = GELU(W_c h + E_c[prefix_c]), logits_c = U_c hidden_c + b_c (r_c levels). In
    training each digit is conditioned on the true digits before it (teacher forcing), so a token costs one
    ``dim x C*hidden`` matmul and C small softmaxes instead of ``dim x codebook``. The product of the conditionals
    is a normalised distribution over the codebook (a test sums it); ``full_log_probs`` enumerates it prefix by
    prefix (about 3,657 hidden vectors a state).

    ``argmax`` does not enumerate: log-probs are <= 0, so a prefix's log-prob bounds every completion's. The greedy
    descent (the likeliest digit at each step) gives a complete code and a lower bound on the best; then the prefix
    tree is expanded level by level, keeping only the prefixes that can still reach that bound (branch and bound).
    The result is the enumeration's argmax; the work is the number of prefixes that stay open (a few for a
    confident state, the whole tree only for a near-uniform one). ``sample`` at temperature 1 draws d_0, then d_1
    given d_0, ... (ancestral sampling: exactly the joint distribution); at any other temperature it samples the
    tempered *joint* p(token)^(1/t) / Z, as the full head does, which is not the product of tempered conditionals
    and so enumerates the codebook.
    """

    def __init__(self, dim: int, codebook_size: int, radices: list[int], hidden: int = 128):
        super().__init__()
        if math.prod(radices) != codebook_size:
            raise ValueError(f"radices {radices} multiply to {math.prod(radices)}, not the codebook {codebook_size}")
        self.radices, self.hidden = list(radices), hidden
        C, R = len(radices), max(radices)
        basis = [math.prod(radices[:c]) for c in range(C)]  # place values: prefix_c = token mod basis[c]
        self.basis_list = basis
        self.register_buffer("basis", torch.tensor(basis), persistent=False)
        self.register_buffer("offset", torch.tensor([sum(basis[:c]) for c in range(C)]), persistent=False)
        self.register_buffer("valid", torch.arange(R)[None] < torch.tensor(radices)[:, None], persistent=False)
        self.inp = nn.Linear(dim, C * hidden)
        self.prefix = nn.Embedding(sum(basis), hidden)
        self.out = nn.Parameter(torch.randn(C, R, hidden) * 0.02)  # (C, R, H), levels >= r_c masked
        self.out_bias = nn.Parameter(torch.zeros(C, R))

    def log_probs(self, h: Tensor, tokens: Tensor) -> Tensor:
        C, H = len(self.radices), self.hidden
        a = self.inp(h).unflatten(-1, (C, H))  # (..., C, H)
        prefix = tokens.unsqueeze(-1) % self.basis + self.offset  # (..., C): rows of the prefix embedding
        z = F.gelu(a + self.prefix(prefix).to(a.dtype))
        logits = torch.einsum("...ch,crh->...cr", z, self.out.to(z.dtype)) + self.out_bias.to(z.dtype)
        logp = F.log_softmax(logits.float().masked_fill(~self.valid, float("-inf")), -1)  # (..., C, R)
        digits = to_digits(tokens, self.radices)  # (..., C)
        return logp.gather(-1, digits.unsqueeze(-1)).squeeze(-1).sum(-1)

    def candidate_log_probs(self, h: Tensor, candidates: Tensor) -> Tensor:
        """h (..., D), candidates (..., K) -> log p of each candidate (..., K): each digit's conditional depends on
        the candidate's own prefix, so every candidate gets its own pass."""
        return self.log_probs(h.unsqueeze(-2).expand(*candidates.shape, h.shape[-1]), candidates)

    def offset_of(self, c: int) -> int:
        return sum(self.basis_list[:c])

    def full_log_probs(self, h: Tensor) -> Tensor:
        lead = h.shape[:-1]
        C, H = len(self.radices), self.hidden
        a = self.inp(h).reshape(-1, C, H)  # (M, C, H)
        total = a.new_zeros(a.shape[0], 1, dtype=torch.float32)  # log p of each prefix so far: (M, basis_c)
        for c, (r, b) in enumerate(zip(self.radices, self.basis_list)):
            e = self.prefix.weight[self.offset_of(c) : self.offset_of(c) + b].to(a.dtype)  # (b, H)
            z = F.gelu(a[:, c, None, :] + e)  # (M, b, H)
            lp = F.log_softmax((z @ self.out[c, :r].to(z.dtype).T + self.out_bias[c, :r].to(z.dtype)).float(), -1)
            total = (total[:, None, :] + lp.transpose(1, 2)).reshape(-1, b * r)  # new prefix = prefix + d * b
        return total.view(*lead, -1)

    def _digit_log_probs(self, a: Tensor, c: int, prefix: Tensor) -> Tensor:
        """a (K, C, H) the states' inputs, prefix (K,) values of digits 0..c-1 -> log p(d_c | h, prefix) (K, r_c)."""
        r = self.radices[c]
        z = F.gelu(a[:, c] + self.prefix.weight[self.offset_of(c) + prefix].to(a.dtype))  # (K, H)
        return F.log_softmax((z @ self.out[c, :r].to(z.dtype).T + self.out_bias[c, :r].to(z.dtype)).float(), -1)

    def _search(self, a: Tensor, slack: float = 1e-4) -> Tensor:
        """The exact argmax for states a (M, C, H) (their input projections): branch and bound over prefixes."""
        M = a.shape[0]
        greedy = a.new_zeros(M, dtype=torch.long)
        bound = torch.zeros(M, device=a.device)  # the greedy code's log-prob: the best can be no lower
        for c, b in enumerate(self.basis_list):
            lp = self._digit_log_probs(a, c, greedy)
            best, d = lp.max(-1)
            bound, greedy = bound + best, greedy + d * b
        # Open prefixes (state, value, log-prob), one level at a time. A prefix below the bound cannot lead to the
        # best code (every completion's log-prob is at most the prefix's); the slack keeps the greedy code's own
        # prefixes open whatever the rounding.
        state, value = torch.arange(M, device=a.device), a.new_zeros(M, dtype=torch.long)
        logp = torch.zeros(M, device=a.device)
        for c, b in enumerate(self.basis_list):
            r = self.radices[c]
            lp = torch.cat([self._digit_log_probs(a[state[i : i + 32768]], c, value[i : i + 32768])
                            for i in range(0, len(state), 32768)])  # (K, r), in pieces to bound the memory
            logp = (logp[:, None] + lp).flatten()  # (K * r): child k*r + d extends prefix k by digit d
            state = state.repeat_interleave(r)
            value = (value[:, None] + torch.arange(r, device=a.device) * b).flatten()
            keep = logp >= bound[state] - slack
            state, value, logp = state[keep], value[keep], logp[keep]
        best = torch.full((M,), float("-inf"), device=a.device).scatter_reduce(0, state, logp, "amax")
        top = logp == best[state]  # ties: the lowest code, as the enumeration's argmax takes
        return torch.full((M,), 2**62, dtype=torch.long, device=a.device).scatter_reduce(
            0, state[top], value[top], "amin")

    def argmax(self, h: Tensor) -> Tensor:
        """The exact most likely token (branch and bound over digit prefixes, in chunks of states)."""
        C, H = len(self.radices), self.hidden
        a = self.inp(h).reshape(-1, C, H)
        return torch.cat([self._search(a[i : i + 1024]) for i in range(0, len(a), 1024)]).view(h.shape[:-1])

    def _chunks(self, h: Tensor, chunk: int = 64):
        flat = h.reshape(-1, h.shape[-1])
        return [self.full_log_probs(flat[i : i + chunk]) for i in range(0, len(flat), chunk)]

    def sample(self, h: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        """A token from the joint distribution at ``temperature``: ancestral at 1, the enumerated tempered joint
        (as the full head samples) otherwise."""
        if temperature != 1:
            probs = torch.cat([F.softmax(lp / temperature, -1) for lp in self._chunks(h)])
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1).view(h.shape[:-1])
        C, H = len(self.radices), self.hidden
        a = self.inp(h).reshape(-1, C, H)
        token = a.new_zeros(a.shape[0], dtype=torch.long)
        for c, b in enumerate(self.basis_list):
            d = torch.multinomial(self._digit_log_probs(a, c, token).exp(), 1, generator=generator).squeeze(-1)
            token = token + d * b
        return token.view(h.shape[:-1])


HEADS = {"full": FullHead, "digits": DigitHead, "ar-digits": ARDigitHead}
