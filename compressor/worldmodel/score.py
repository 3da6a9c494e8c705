"""Scores of a world model on held-out segments, against model-free baselines, in one report.

Token scores count every frame that has a frame before it in its segment (each segment's first frame has no past;
the model's "all frames" figure codes those under the unigram instead):

- world model: teacher-forced log-loss, each frame with at least T/2 frames of context where the segment has them
  (``data.scoring_windows``), and next-token accuracy (teacher-forced argmax).
- unigram: token frequencies of the training split (add-half smoothing over the codebook).
- copy previous: p(token) = alpha for the previous frame's token at the same position, the rest spread evenly over
  the other codes; alpha = the repeat share of the training split (its maximum-likelihood value).
- adaptive coder (``AdaptivePrior``): its ideal bits on frames with a past, and its actual coded bytes (header
  included) over every frame.
- lzma over int16, position-major (commaVQ's baseline), over every frame: a byte compressor cannot leave one out.

Pixels (with the compressor that made the tokens): from a start frame t every ``rollout_stride`` frames, the
model's greedy rollout (argmax, its own frames fed back) decoded at horizons h, against copying frame t; both
compared with the decoded real tokens of frame t+h (the best any token prediction can reach), PSNR and MS-SSIM.
"""

from __future__ import annotations

import lzma
import math
from collections import defaultdict

import torch

from compressor.entropy.adaptive import AdaptivePrior
from compressor.entropy.stream import encode_segment
from compressor.tools.entropy_report import position_major_int16
from compressor.worldmodel.data import Segment, TokenFormat, scoring_windows
from compressor.worldmodel.model import WorldModel

LN2 = math.log(2)
HORIZONS = (1, 2, 4, 8)


@torch.no_grad()
def model_bits(model: WorldModel, segments: list[Segment], batch_size: int = 16) -> dict:
    """Bits and correct argmaxes of every frame with a past, summed per source: {source: [bits, correct, tokens]}."""
    model.eval()
    T = model.config.context_frames
    jobs = defaultdict(list)  # window length -> [(segment, start, first scored frame)]
    for s in segments:
        for start, end, first in scoring_windows(len(s.tokens), T):
            jobs[end - start].append((s, start, first))
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for length, windows in jobs.items():
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            batch = torch.stack([s.tokens[a : a + length] for s, a, _ in chunk])  # (B, L, N)
            B, L, N = batch.shape
            flat = batch.reshape(B, L * N)
            h, cands = model.scored_states(flat)  # (B, (L-1)*N, D): the states that predict frames 1..L-1
            nats = -model.token_log_probs(h, flat[:, N:], cands).view(B, L - 1, N)
            hit = (model.token_argmax(h, cands) == flat[:, N:]).view(B, L - 1, N)
            for b, (s, a, first) in enumerate(chunk):
                keep = slice(first - a - 1, None)  # frames first..end-1 of the segment
                row = out[s.source]
                row[0] += float(nats[b, keep].sum()) / LN2
                row[1] += int(hit[b, keep].sum())
                row[2] += hit[b, keep].numel()
    return dict(out)


def unigram_bits(counts: torch.Tensor) -> torch.Tensor:
    """Training counts (V,) -> bits of each code (V,), add-half smoothed so unseen codes stay codable."""
    p = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    return -p.log2()


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
        return True
    except ValueError:
        return False


def baseline_bits(segments: list[Segment], unigram: torch.Tensor, alpha: float, fmt: TokenFormat,
                  adaptive: bool = True) -> dict:
    """Per source: bits of frames with a past under the unigram, copy-previous and adaptive models; lzma and
    adaptive bytes over all frames; counts. {source: {name: value}}."""
    V = fmt.codebook_size
    same_bits, other_bits = -math.log2(alpha), -math.log2((1 - alpha) / (V - 1))
    out: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    for s in segments:
        t = s.tokens
        row = out[s.source]
        row["tokens_with_past"] += t[1:].numel()
        row["tokens_all"] += t.numel()
        row["first_frame_unigram_bits"] += float(unigram[t[0]].sum())
        row["unigram"] += float(unigram[t[1:]].sum())
        same = int((t[1:] == t[:-1]).sum())
        row["copy_previous"] += same * same_bits + (t[1:].numel() - same) * other_bits
        row["copy_previous_correct"] += same
        row["lzma_bytes_all"] += len(lzma.compress(position_major_int16(t)))
        if adaptive:
            # The segment header holds a hex model id; "commavq" (its own files) is none.
            prior = AdaptivePrior(V, fmt.grid, fmt.model_id if _is_hex(fmt.model_id) else "")
            row["adaptive"] += float(prior.bits(t)[1:].sum())
            row["adaptive_bytes_all"] += len(encode_segment(t, prior))
    return {k: dict(v) for k, v in out.items()}


@torch.no_grad()
def pixel_scores(model: WorldModel, codec, segments: list[Segment], horizons: tuple[int, ...] = HORIZONS,
                 rollout_stride: int = 8, batch_size: int = 32) -> dict:
    """PSNR / MS-SSIM by horizon of the greedy rollout and of copying the start frame, against the decoded real
    frame, averaged per source: {source: {h: {model_psnr, copy_psnr, model_ms_ssim, copy_ms_ssim, n}}}."""
    from compressor.metrics import frame_ms_ssim, frame_psnr

    model.eval()
    P = model.config.context_frames - 1  # real past frames given
    H = max(horizons)
    starts = [(s, t) for s in segments for t in range(P - 1, len(s.tokens) - H, rollout_stride)]
    sums: dict[str, dict] = defaultdict(lambda: {h: defaultdict(float) for h in horizons})
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        past = torch.stack([s.tokens[t - P + 1 : t + 1] for s, t in chunk])  # (B, P, N), frame t last
        pred = model.rollout(past, H)  # (B, H, N)
        copy = codec.decode(past[:, -1])  # uint8 (B, 3, H, W): frame t, the copy baseline at every horizon
        for h in horizons:
            truth = torch.stack([s.tokens[t + h] for s, t in chunk])
            real = codec.decode(truth)
            guess = codec.decode(pred[:, h - 1])
            m_psnr, c_psnr = frame_psnr(guess, real), frame_psnr(copy, real)
            m_ssim, c_ssim = frame_ms_ssim(guess, real), frame_ms_ssim(copy, real)
            for b, (s, _) in enumerate(chunk):
                acc = sums[s.source][h]
                for name, v in (("model_psnr", m_psnr), ("copy_psnr", c_psnr), ("model_ms_ssim", m_ssim),
                                ("copy_ms_ssim", c_ssim)):
                    acc[name] += float(v[b].clamp_max(100))  # identical frames: PSNR capped at 100 dB
                acc["token_accuracy"] += float((pred[b, h - 1] == truth[b]).float().mean())
                acc["n"] += 1
    return {src: {h: {k: (v / acc["n"] if k != "n" else int(v)) for k, v in acc.items()} for h, acc in by_h.items()}
            for src, by_h in sums.items()}


def summarise(name: str, model_rows: dict, base_rows: dict, num_tokens: int, pixels: dict | None) -> dict:
    """One val set's totals (bits/token, bits/frame, accuracy) and per-source bits/token."""
    tot = defaultdict(float)
    for src, row in base_rows.items():
        for k, v in row.items():
            tot[k] += v
    m_bits = sum(r[0] for r in model_rows.values())
    m_correct = sum(r[1] for r in model_rows.values())
    n, n_all = tot["tokens_with_past"], tot["tokens_all"]
    rows = {
        "world model": {"bits_per_token": m_bits / n, "all_frames_bits_per_token":
                        (m_bits + tot["first_frame_unigram_bits"]) / n_all, "accuracy": m_correct / n},
        "unigram (train)": {"bits_per_token": tot["unigram"] / n,
                            "all_frames_bits_per_token": (tot["unigram"] + tot["first_frame_unigram_bits"]) / n_all},
        "copy previous": {"bits_per_token": tot["copy_previous"] / n, "accuracy": tot["copy_previous_correct"] / n},
        "lzma, int16 position-major (commaVQ)": {"all_frames_bits_per_token": 8 * tot["lzma_bytes_all"] / n_all},
    }
    if "adaptive" in tot:
        rows["adaptive coder"] = {"bits_per_token": tot["adaptive"] / n,
                                  "all_frames_bits_per_token": 8 * tot["adaptive_bytes_all"] / n_all}
    for row in rows.values():
        for k in ("bits_per_token", "all_frames_bits_per_token"):
            if k in row:
                row[k.replace("token", "frame")] = row[k] * num_tokens
    by_source = {src: {"world model": model_rows[src][0] / model_rows[src][2],
                       "copy previous": base_rows[src]["copy_previous"] / base_rows[src]["tokens_with_past"],
                       **({"adaptive coder": base_rows[src]["adaptive"] / base_rows[src]["tokens_with_past"]}
                          if "adaptive" in base_rows[src] else {})}
                 for src in base_rows if src in model_rows}
    result = {"name": name, "frames": int(n_all // num_tokens), "tokens_scored": int(n), "rows": rows,
              "bits_per_token_by_source": by_source}
    if pixels:
        result["pixels_by_source"] = pixels
        result["pixels_clip_mean"] = {
            h: {k: sum(p[h][k] for p in pixels.values()) / len(pixels) for k in pixels[next(iter(pixels))][h]
                if k != "n"} for h in next(iter(pixels.values()))}
    return result


def markdown(sets: list[dict], header: str) -> str:
    lines = [header, ""]
    for s in sets:
        lines += [f"## {s['name']}: {s['frames']} frames, {s['tokens_scored']} tokens with a past", "",
                  "| method | bits/token (frames with a past) | bits/frame | bits/token (all frames) | next-token acc |",
                  "|---|---|---|---|---|"]
        for name, r in s["rows"].items():
            f = lambda k, d=3: f"{r[k]:.{d}f}" if k in r else ""  # noqa: E731
            lines.append(f"| {name} | {f('bits_per_token')} | {f('bits_per_frame', 1)} | "
                         f"{f('all_frames_bits_per_token')} | {f('accuracy')} |")
        lines += ["", "Bits/token by clip: " + "; ".join(
            f"{src}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items())
            for src, r in s["bits_per_token_by_source"].items()), ""]
        if "pixels_clip_mean" in s:
            lines += ["Decoded greedy rollout vs copying the last real frame (clip mean; reference: the decoded real "
                      "tokens):", "", "| horizon | model PSNR | copy PSNR | model MS-SSIM | copy MS-SSIM | token acc |",
                      "|---|---|---|---|---|---|"]
            for h, r in s["pixels_clip_mean"].items():
                lines.append(f"| {h} | {r['model_psnr']:.2f} | {r['copy_psnr']:.2f} | {r['model_ms_ssim']:.4f} | "
                             f"{r['copy_ms_ssim']:.4f} | {r['token_accuracy']:.3f} |")
            lines.append("")
    return "\n".join(lines) + "\n"
