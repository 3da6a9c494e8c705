"""Measure every prior on token shards or commaVQ-layout .npy files: ideal and real bits, bytes per frame, speed,
exactness; against lzma and zstd over packed tokens and over commaVQ's baseline layout (int16, position-major)."""

from __future__ import annotations

import lzma
import os
import platform
import time

import numpy as np
import torch
import zstandard

from compressor.benchmark import write_report
from compressor.codec.packing import from_digits, to_digits, pack, unpack
from compressor.entropy.adaptive import VERSION as ADAPTIVE_VERSION, AdaptivePrior
from compressor.entropy.priors import TemporalPrior, one_thread
from compressor.entropy.stream import FITTED_KINDS, HEADER_BYTES, decode_segment, encode_segment, load_prior
from compressor.latents.samples import grid_of


def _timed(fn, *args):
    """fn(*args) and the CPU seconds it took: every coder here runs on one thread, and CPU time, unlike wall time,
    does not count the time other processes on a shared machine take from it."""
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def token_format(segments: list[dict]) -> dict:
    """The codebook size, grid and model id that every segment's metadata share: what a prior is built for when no
    checkpoint says it (commaVQ files, exports of ours, encode.py shards). ``ValueError`` if they differ or lack one."""
    if not segments:
        raise ValueError("no token segments found")
    formats = set()
    for seg in segments:
        meta = seg["meta"]
        formats.add((meta.get("codebook_size"), grid_of(meta), meta.get("model_id", "")))
    if len(formats) > 1:
        raise ValueError(f"segments of several token formats (codebook, grid, model id): {sorted(map(str, formats))}")
    ((codebook, grid, mid),) = formats
    if codebook is None or grid is None:
        raise ValueError("the segments' metadata lack codebook_size or token_layout; give the --checkpoint that made "
                         "the tokens")
    return {"codebook_size": int(codebook), "grid": grid, "model_id": mid}


def _general_purpose(name: str, compress, decompress, segments: list[dict], to_bytes, from_bytes) -> dict:
    """A byte compressor over each segment's tokens, serialised by ``to_bytes(tokens (T, N)) -> bytes`` and back by
    ``from_bytes(bytes, T, N) -> tokens``."""
    size = enc_s = dec_s = 0.0
    exact = True
    for seg in segments:
        raw = to_bytes(seg["tokens"])
        data, t_enc = _timed(compress, raw)
        back, t_dec = _timed(decompress, data)
        exact &= torch.equal(from_bytes(back, *seg["tokens"].shape), seg["tokens"])
        size, enc_s, dec_s = size + len(data), enc_s + t_enc, dec_s + t_dec
    return {"method": name, "bytes": size, "encode_s": enc_s, "decode_s": dec_s, "exact": bool(exact)}


def position_major_int16(tokens: torch.Tensor) -> bytes:
    """tokens (T, N) -> int16 little-endian bytes (N, T): all frames of position 0, then position 1, ...

    The layout of commaVQ's lzma baseline (its compression challenge's ``compress.py``): a position's token
    repeats from frame to frame, so transposed the repeats sit next to each other for the byte compressor.
    """
    return np.ascontiguousarray(tokens.numpy().astype("<i2").T).tobytes()


def from_position_major_int16(data: bytes, num_frames: int, num_tokens: int) -> torch.Tensor:
    """The inverse of ``position_major_int16``: bytes -> int64 (T, N)."""
    return torch.from_numpy(np.frombuffer(data, "<i2").reshape(num_tokens, num_frames).T.astype(np.int64))


def _prior_row(prior, segments: list[dict]) -> dict:
    size = enc_s = dec_s = ideal = 0.0
    exact = True
    by_source: dict[str, list[int]] = {}
    for seg in segments:
        data, t_enc = _timed(encode_segment, seg["tokens"], prior)
        back, t_dec = _timed(decode_segment, data, prior)
        exact &= torch.equal(back, seg["tokens"])
        with torch.no_grad():
            ideal += float(prior.bits(seg["tokens"]).sum())
        size, enc_s, dec_s = size + len(data), enc_s + t_enc, dec_s + t_dec
        counts = by_source.setdefault(seg["meta"].get("source", ""), [0, 0])
        counts[0], counts[1] = counts[0] + len(data), counts[1] + len(seg["tokens"])
    return {"bytes_per_frame_by_source": {k: round(b / max(n, 1), 2) for k, (b, n) in by_source.items()},
            "method": (f"prior ({'abcd'[FITTED_KINDS.index(prior.kind)]}) {prior.kind}" if prior.kind in FITTED_KINDS
                       else f"adaptive v{prior.version} (no fitted prior)"),
            "prior_id": prior.prior_id(), "bytes": size, "ideal_bits": ideal, "encode_s": enc_s, "decode_s": dec_s,
            "exact": bool(exact),
            "coder": "compressai rANS, 16-bit" if prior.coder == 1 else "constriction ANS, 24-bit"}


@torch.no_grad()
def _constriction_row(prior: TemporalPrior, segments: list[dict]) -> dict:
    """The temporal prior's exact probabilities coded by constriction's 24-bit ANS instead (one stream/segment)."""
    size = enc_s = dec_s = 0.0
    exact = True
    for seg in segments:
        with one_thread():
            (words, out), t_enc, t_dec = _constriction_round_trip(prior, to_digits(seg["tokens"], prior.radices))
        exact &= torch.equal(from_digits(out, prior.radices), seg["tokens"])
        size += 4 * len(words) + HEADER_BYTES  # with the same header as our segments
        enc_s, dec_s = enc_s + t_enc, dec_s + t_dec
    return {"method": "prior (c) temporal", "prior_id": prior.prior_id(), "bytes": size, "encode_s": enc_s,
            "decode_s": dec_s, "exact": bool(exact), "coder": "constriction ANS, 24-bit (measured only)"}


def _constriction_round_trip(prior: TemporalPrior, digits: torch.Tensor):
    import constriction

    family = constriction.stream.model.Categorical(perfect=False)
    t0 = time.perf_counter()
    stages = []
    for t in range(len(digits)):
        past = prior.past_of(digits, t)
        h = prior.features(past)
        for c in range(len(prior.radices)):
            stages.append((digits[t, :, c].numpy().astype(np.int32),
                           prior.frame_probs(h, past, digits[t : t + 1], c).numpy().astype(np.float64)))
    coder = constriction.stream.stack.AnsCoder()
    for symbols, probs in reversed(stages):  # a stack: push last what is decoded first
        coder.encode_reverse(symbols, family, probs)
    words = coder.get_compressed()
    t1 = time.perf_counter()
    decoder = constriction.stream.stack.AnsCoder(words)
    out = torch.zeros_like(digits)
    for t in range(len(digits)):
        past = prior.past_of(out, t)
        h = prior.features(past)
        for c in range(len(prior.radices)):
            probs = prior.frame_probs(h, past, out[t : t + 1], c).numpy().astype(np.float64)
            out[t, :, c] = torch.from_numpy(decoder.decode(family, probs).astype(np.int64))
    return (words, out), t1 - t0, time.perf_counter() - t1


def report(prior_paths: list[str], segments: list[dict], output: str | None, inputs: list[str] | None = None,
           with_constriction: bool = False, adaptive_versions: tuple[int, ...] = (ADAPTIVE_VERSION,)) -> dict:
    """The adaptive coder (each of ``adaptive_versions``: older ones show what a version change bought on the same
    tokens) and every prior against fixed packing, lzma and zstd on ``segments`` (read from the token files
    ``inputs``)."""
    priors = [load_prior(p) for p in prior_paths]
    for prior, path in zip(priors, prior_paths):
        for seg in segments:
            if seg["meta"].get("model_id", prior.model_id) != prior.model_id:
                raise ValueError(f"{path} is a prior for model {prior.model_id}; {seg['meta'].get('source')} holds "
                                 f"tokens of model {seg['meta']['model_id']}")
    frames = sum(len(s["tokens"]) for s in segments)
    num_tokens = segments[0]["tokens"].shape[1]
    bits = int(segments[0]["meta"].get("bits_per_token", 14))  # 10 for commaVQ's 1024 codes
    packed = (lambda t: pack(t, bits), lambda b, T, N: unpack(b, T, N, bits))
    rows = [{"method": f"fixed {bits}-bit packing", "bytes": frames * -(-num_tokens * bits // 8), "exact": True},
            _general_purpose("lzma (preset 9e) over packed tokens", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
                             lzma.decompress, segments, *packed),
            _general_purpose("zstd (level 19) over packed tokens", zstandard.ZstdCompressor(level=19).compress,
                             zstandard.ZstdDecompressor().decompress, segments, *packed)]
    if max((int(s["tokens"].max()) for s in segments if s["tokens"].numel()), default=0) < 1 << 15:  # fits int16
        # commaVQ's baseline exactly (lzma's default preset over int16, position-major), and zstd on the same bytes
        int16 = (position_major_int16, from_position_major_int16)
        rows += [_general_purpose("lzma (default preset) over int16, position-major (commaVQ's baseline)",
                                  lzma.compress, lzma.decompress, segments, *int16),
                 _general_purpose("zstd (level 19) over int16, position-major",
                                  zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress,
                                  segments, *int16)]
    # The adaptive coder needs no file: it is built for the tokens' own format, from their metadata or, for shards
    # whose metadata do not say it, from the fitted priors given for them.
    try:
        fmt = token_format(segments)
    except ValueError:
        if not priors:
            raise
        fmt = {"codebook_size": priors[0].codebook_size, "grid": tuple(priors[0].grid), "model_id": priors[0].model_id}
    for version in adaptive_versions:
        rows.append(_prior_row(AdaptivePrior(fmt["codebook_size"], fmt["grid"], fmt["model_id"], version), segments))
    for prior in priors:
        rows.append(_prior_row(prior, segments))
        if with_constriction and isinstance(prior, TemporalPrior):
            rows.append(_constriction_row(prior, segments))
    for row in rows:
        row["bytes_per_frame"] = round(row["bytes"] / frames, 2)
        row["bits_per_token"] = round(8 * row["bytes"] / (frames * num_tokens), 3)
        # commaVQ's "compression rate": fixed-width bits over these bits (for its 1024 codes, 10 bits / bits/token)
        row["rate"] = round(bits / max(row["bits_per_token"], 1e-9), 3)
        if "ideal_bits" in row:
            row["ideal_bits_per_token"] = round(row.pop("ideal_bits") / (frames * num_tokens), 3)
        for k in ("encode", "decode"):
            if f"{k}_s" in row:
                row[f"{k}_fps"] = round(frames / max(row.pop(f"{k}_s"), 1e-9), 1)
    result = {"frames": frames, "segments": len(segments), "tokens_per_frame": num_tokens,
              "sources": sorted({s["meta"].get("source", "") for s in segments}), "priors": prior_paths,
              "shards": inputs, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs; frames/s per CPU-second of one thread",
              "rows": rows}
    md = _markdown(result)
    print(md)
    if output:
        write_report(output, "report", result, md)
    return result


def _markdown(result: dict) -> str:
    lines = [f"{result['frames']} frames in {result['segments']} segments ({', '.join(result['sources'])}); "
             f"{result['tokens_per_frame']} tokens per frame; {result['machine']}.", "",
             "| method | coder | bits/token (ideal) | bits/token | rate | bytes/frame | encode frames/s | decode frames/s "
             "| exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_source = ["", "Bytes per frame by clip (headers included):", ""]
    for r in result["rows"]:
        if "bytes_per_frame_by_source" in r:
            by_source.append(f"- {r['method']}: " + ", ".join(f"{k} {v}" for k, v in r["bytes_per_frame_by_source"].items()))
        lines.append(f"| {r['method']} | {r.get('coder', '')} | {r.get('ideal_bits_per_token', '')} | "
                     f"{r['bits_per_token']} | {r['rate']} | {r['bytes_per_frame']} | {r.get('encode_fps', '')} | "
                     f"{r.get('decode_fps', '')} | {'yes' if r['exact'] else 'NO'} |")
    return "\n".join(lines + by_source) + "\n"
