"""Fitting priors on token segments (``{"tokens": int64 (T, N), "meta": dict}``, as ``read_segments`` yields them
from encode.py's shards or commaVQ-layout ``.npy`` files; ``compressor.tools.entropy`` reads them)."""

from __future__ import annotations

import random
import sys
import time

import torch
from tqdm import tqdm

from compressor.codec.packing import to_digits
from compressor.entropy.priors import FactorisedPrior, Prior, StaticPrior, TemporalPrior
from compressor.entropy.token_prior import TokenPrior
from compressor.utils import cosine


def check_segments(segments: list[dict], model_id: str, num_tokens: int, codebook_size: int) -> None:
    """Shards made by another compressor would train a prior for the wrong tokens: refuse them by name."""
    if not segments:
        raise ValueError("no token segments found")
    for seg in segments:
        meta = seg["meta"]
        if meta.get("model_id", model_id) != model_id:
            raise ValueError(f"segment {meta.get('source')} holds tokens of model {meta['model_id']}, not of the "
                             f"checkpoint's model {model_id}")
        if seg["tokens"].shape[1] != num_tokens or int(seg["tokens"].max()) >= codebook_size:
            raise ValueError(f"segment {meta.get('source')} does not hold {num_tokens} tokens below {codebook_size}")


def fit_static(prior: StaticPrior | FactorisedPrior, segments: list[dict]) -> Prior:
    return prior.fit(torch.cat([s["tokens"] for s in segments]))


def mean_bits_per_token(prior: Prior, segments: list[dict]) -> float:
    frames = sum(len(s["tokens"]) for s in segments)
    with torch.no_grad():
        bits = sum(float(prior.bits(s["tokens"]).sum()) for s in segments)
    return bits / (frames * prior.num_tokens)


def _batch(digits: list[torch.Tensor], radices: list[int], context: int, batch_size: int, rng: random.Random,
           p_start: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (past (B, K, N, C), current (B, N, C)) pairs; some pasts are cut as at a segment start."""
    lengths = [len(d) for d in digits]
    picks = rng.choices(range(len(digits)), weights=lengths, k=batch_size)
    missing = torch.tensor(radices)
    past, current = [], []
    for s in picks:
        t = rng.randrange(lengths[s])
        start = t - rng.randrange(context) if rng.random() < p_start else t - context  # first frame kept in view
        frames = [digits[s][i] if i >= max(start, 0) else missing.expand_as(digits[s][0]) for i in range(t - context, t)]
        past.append(torch.stack(frames))
        current.append(digits[s][t])
    return torch.stack(past), torch.stack(current)


def fit_temporal(prior: TemporalPrior | TokenPrior, segments: list[dict], val_segments: list[dict] | None = None, *,
                 steps: int = 1000, batch_size: int = 32, lr: float = 2e-3, minutes: float | None = None,
                 weight_decay: float = 0.01, seed: int = 0, log_every: int = 250) -> dict:
    """AdamW on the ideal code length with a cosine schedule; stops early at ``minutes``. Returns a summary.

    Fits the token prior (d) too: its tokens are one digit of radix ``codebook_size``."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    digits = [to_digits(s["tokens"], prior.radices) for s in segments]
    opt = torch.optim.AdamW(prior.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: cosine(i / steps))
    history, t0 = [], time.perf_counter()
    prior.train()
    bar = tqdm(range(steps), desc=f"{prior.kind} prior", file=sys.stderr, mininterval=5)
    for step in bar:
        past, current = _batch(digits, prior.radices, prior.context, batch_size, rng)
        loss = prior.nll_bits(past, current).mean() / prior.num_tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(bits_per_token=f"{loss.item():.3f}", refresh=False)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append({"step": step + 1, "train_bits_per_token": round(loss.item(), 4)})
            if val_segments:
                prior.eval()
                history[-1]["val_bits_per_token"] = round(mean_bits_per_token(prior, val_segments), 4)
                prior.train()
                bar.write(f"step {step + 1}: val {history[-1]['val_bits_per_token']:.3f} bits/token")
        if minutes is not None and time.perf_counter() - t0 > 60 * minutes:
            break
    prior.eval()
    summary = {"steps": step + 1, "seconds": round(time.perf_counter() - t0, 1), "history": history}
    if val_segments:
        summary["val_bits_per_token"] = round(mean_bits_per_token(prior, val_segments), 4)
    return summary
