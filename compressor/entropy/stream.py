"""The coded segment format, and saving and loading priors.

A segment is a 44-byte header followed by one rANS payload (little-endian)::

    magic     4s   b"CTOK"
    version   u8   FORMAT_VERSION
    prior     u8   1 static, 2 factorised, 3 temporal, 4 adaptive (``compressor.entropy.adaptive``), 5 token
                   (``compressor.entropy.token_prior``)
    coder     u8   1 = compressai rANS with 16-bit frequencies (priors 1-3, 5); 2 = constriction ANS, 24-bit (prior
                   4); 0 = stored: the fixed-width packing of ``compressor.pack``, used when the prior would code
                   the segment larger than that
    reserved  u8   0
    model_id  8s   the compressor whose tokens these are (``compressor.codec.checkpoint.model_id``)
    prior_id  8s   the exact prior (``Prior.prior_id``); for the adaptive prior its version, grid and codebook
                   size, so that such a segment decodes with no prior file
    frames    u32  frame count
    tokens    u16  tokens per frame
    reserved  u16  0
    length    u32  payload bytes
    tokens    u32  CRC-32 of the decoded tokens (uint16, row-major)
    crc       u32  CRC-32 of the header's first 40 bytes and the payload

The payload CRC catches corruption before decoding; the token CRC catches the one failure a CRC over the payload
cannot: a prior that evaluates to different probabilities on the decoding machine.

A CRC is no defence against crafted bytes, so every header field is also checked against the payload before any
decoding: zero frames if and only if no payload, a stored payload of exactly ``frames`` packed frames, and a rANS
payload of whole 4-byte words that can hold ``frames`` frames at all (every coded symbol costs a minimum number of
bits) and that pays for decoding them (``work_frames``: the encoder pads a payload that pays for less).
``coding.Decoder`` then keeps the rANS coder inside the payload (constriction checks its own reads), and decoded
tokens are range-checked.

Segments written before the adaptive prior existed have the same format (version 1) and decode as before.
"""

from __future__ import annotations

import math
import os
import struct
import zlib

import torch
from torch import Tensor

from compressor.entropy.adaptive import AdaptivePrior
from compressor.entropy.coding import SLACK_BITS, min_symbol_bits
from compressor.entropy.priors import KINDS, PRIORS as _DIGIT_PRIORS, Prior
from compressor.entropy.token_prior import TokenPrior
from compressor.codec.packing import pack, token_bits, tokens_crc32, unpack
from compressor.utils import atomic_write, open_checked

MAGIC = b"CTOK"
FORMAT_VERSION = 1
CODER_STORED = 0
CODER_COMPRESSAI_RANS16 = 1
CODER_CONSTRICTION_ANS24 = AdaptivePrior.coder
SEGMENT_KINDS = (*KINDS, AdaptivePrior.kind, TokenPrior.kind)  # the header's prior field, from 1
FITTED_KINDS = (*KINDS, TokenPrior.kind)  # what ``compressor.tools.entropy train`` fits
PRIORS = {**_DIGIT_PRIORS, TokenPrior.kind: TokenPrior}  # the fitted priors by kind, as prior files name them
_HEADER = struct.Struct("<4sBBBB8s8sIHHIII")
HEADER_BYTES = _HEADER.size
PRIOR_FORMAT = "compressor-prior/1"
MAX_PRIOR_BYTES = 4 << 30  # a prior file larger than this is not one (a symlink to /dev/zero is refused too)


class StreamError(ValueError):
    """A coded segment that cannot be decoded into the tokens it was made from."""


class PriorMismatchError(StreamError):
    """The segment was coded for another compressor model or with another prior."""


def encode_segment(tokens: Tensor, prior: Prior) -> bytes:
    """tokens int (T, N) -> header + rANS payload."""
    tokens = torch.as_tensor(tokens).long().cpu()
    prior.check_tokens(tokens)
    payload = prior.encode_payload(tokens) if len(tokens) else b""  # compressai's flush of an empty stream crashes
    if payload and not isinstance(prior, AdaptivePrior):  # the adaptive coder pads its own (its version 4)
        payload = paid_payload(prior, payload, len(tokens))
    coder = prior.coder
    stored = pack(tokens, token_bits(prior.codebook_size)) if len(tokens) else b""
    if len(stored) < len(payload):  # a prior that does not fit these tokens never costs more than packing
        payload, coder = stored, CODER_STORED
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, SEGMENT_KINDS.index(prior.kind) + 1, coder, 0,
                        bytes.fromhex(prior.model_id.ljust(16, "0")[:16]), bytes.fromhex(prior.prior_id()),
                        len(tokens), prior.num_tokens, 0, len(payload), tokens_crc32(tokens), 0)
    crc = zlib.crc32(payload, zlib.crc32(head[: HEADER_BYTES - 4]))
    return head[: HEADER_BYTES - 4] + struct.pack("<I", crc) + payload


def read_header(data: bytes) -> dict:
    """Parse and check a segment's header and CRC; raises ``StreamError`` with the reason."""
    if len(data) < HEADER_BYTES:
        raise StreamError(f"truncated segment: {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header")
    (magic, version, kind, coder, _, model_id, prior_id, frames, tokens, _, length, token_crc,
     crc) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StreamError(f"not a coded token segment (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise StreamError(f"segment format version {version}; this code reads version {FORMAT_VERSION}")
    if not 1 <= kind <= len(SEGMENT_KINDS) or coder not in (CODER_STORED, _CODERS[SEGMENT_KINDS[kind - 1]]):
        raise StreamError(f"unknown prior kind {kind} or coder {coder}, or a coder that prior does not use")
    if len(data) != HEADER_BYTES + length:
        raise StreamError(f"segment is {len(data)} bytes; its header says {HEADER_BYTES + length}")
    if zlib.crc32(data[HEADER_BYTES:], zlib.crc32(data[: HEADER_BYTES - 4])) != crc:
        raise StreamError("corrupt segment: CRC mismatch")
    if tokens == 0:
        raise StreamError("header says 0 tokens per frame")
    if (frames == 0) != (length == 0) or (frames == 0 and token_crc != zlib.crc32(b"")):
        raise StreamError(f"header says {frames} frames with {length} payload bytes and token CRC {token_crc:#x}: "
                          "a segment has frames exactly when it has a payload")
    if coder == CODER_COMPRESSAI_RANS16 and length and (length < 8 or length % 4):
        raise StreamError(f"a rANS payload is a whole number of 4-byte words, at least 2; header says {length} bytes")
    if coder == CODER_CONSTRICTION_ANS24 and length % 4:
        raise StreamError(f"an ANS payload is a whole number of 4-byte words; header says {length} bytes")
    return {"prior": SEGMENT_KINDS[kind - 1], "stored": coder == CODER_STORED, "model_id": model_id.hex(), "prior_id": prior_id.hex(), "num_frames": frames,
            "num_tokens": tokens, "token_crc": token_crc, "payload_bytes": length}


_CODERS = {**{kind: CODER_COMPRESSAI_RANS16 for kind in FITTED_KINDS}, AdaptivePrior.kind: CODER_CONSTRICTION_ANS24}


def segment_prior(data: bytes, prior: Prior | None) -> Prior:
    """The prior that decodes this segment: an adaptive segment's own (from its header: no file needed), else
    ``prior``; ``PriorMismatchError`` when the segment needs a fitted prior and none is given."""
    head = read_header(data)
    if head["prior"] == AdaptivePrior.kind:
        try:
            adaptive = AdaptivePrior.from_id(head["prior_id"], head["model_id"])
        except ValueError as e:
            raise StreamError(f"adaptive segment: {e}") from e
        if adaptive.num_tokens != head["num_tokens"]:
            raise StreamError(f"adaptive segment of a {adaptive.grid} grid with {head['num_tokens']} tokens per frame")
        return adaptive
    if prior is None:
        raise PriorMismatchError(f"segment was coded with the {head['prior']} prior {head['prior_id']}; pass that "
                                 "prior file to decode it")
    return prior


# Decoding work a fitted prior's payload pays for (issue 39). Under 16-bit rANS a near-certain symbol costs ~2e-5
# bits, so a crafted header could claim ~114 factorised or temporal frames a payload byte, each decoded in full
# (the temporal prior runs its network for every one). So a P-byte payload may code at most
# FREE_WORK + prior.work_per_byte * P units of work (``Prior.work_per_frame``: one a symbol, more for a network
# pass); the encoder pads a payload that codes more with zero words the decoder never reads (only near-static
# segments: real tokens cost more bytes a frame than the budget asks), and the decoder refuses a header that claims
# more. reports/hostile/bench-crafted-streams measures what crafted segments cost against real ones.
FREE_WORK = 4096


def work_frames(prior: Prior, payload_bytes: int) -> int:
    """The most frames a fitted prior's payload of this many bytes pays for."""
    return (FREE_WORK + prior.work_per_byte * payload_bytes) // prior.work_per_frame()


def paid_payload(prior: Prior, payload: bytes, frames: int) -> bytes:
    """``payload`` with zero words appended until it pays for ``frames`` frames (unchanged when it already does).

    A rANS decoder reads a legal payload's words in order and never past the encoder's last one, so the words
    appended are never read: the tokens decode as before."""
    missing = frames * prior.work_per_frame() - FREE_WORK - prior.work_per_byte * len(payload)
    if missing <= 0:
        return payload
    words = -(-missing // (4 * prior.work_per_byte))
    return payload + bytes(4 * words)


def max_frames(prior: Prior, payload_bytes: int) -> int | None:
    """The most frames a rANS payload of this size can hold under this prior (None: no bound), and that it pays
    for (``work_frames``).

    Decoding a legal payload of W words after the 8-byte state moves the coder's state from below 2**63 to at
    least 2**31 while reading W words of at most 32 + SLACK_BITS bits each, so its symbols cost at most
    32 + (32 + SLACK_BITS) * W bits in all; each frame's symbols cost at least ``min_symbol_bits`` each.
    """
    if isinstance(prior, AdaptivePrior):
        return prior.max_frames(payload_bytes)
    frame_bits = sum(min_symbol_bits(a) for a in prior.frame_alphabets())
    words = (payload_bytes - 8) / 4
    paid = work_frames(prior, payload_bytes)
    return min(paid, math.floor((32 + (32 + SLACK_BITS) * words) / frame_bits)) if frame_bits > 0 else paid


def decode_segment(data: bytes, prior: Prior | None = None, num_frames: int | None = None) -> Tensor:
    """header + payload -> tokens int64 (T, N), or ``StreamError``; never tokens other than those encoded.

    An adaptive segment decodes with no prior (any ``prior`` given is not used for it); the others need theirs.
    ``num_frames``, when known (a sample's metadata), must match the header: a mismatch is refused before decoding.
    """
    head = read_header(data)
    prior = segment_prior(data, prior)
    if head["model_id"] != prior.model_id.ljust(16, "0")[:16]:
        raise PriorMismatchError(f"segment was coded for compressor model {head['model_id']}; the prior belongs to "
                          f"{prior.model_id}")
    if head["prior"] != prior.kind or head["prior_id"] != prior.prior_id():
        raise PriorMismatchError(f"segment was coded with {head['prior']} prior {head['prior_id']}; got {prior.kind} "
                          f"prior {prior.prior_id()}")
    if head["num_tokens"] != prior.num_tokens:
        raise PriorMismatchError(f"segment has {head['num_tokens']} tokens per frame; the prior {prior.num_tokens}")
    frames, payload = head["num_frames"], data[HEADER_BYTES:]
    if num_frames is not None and frames != num_frames:
        raise StreamError(f"segment holds {frames} frames; its metadata says {num_frames}")
    if frames == 0:
        return torch.zeros(0, prior.num_tokens, dtype=torch.long)
    bits = token_bits(prior.codebook_size)
    if head["stored"] and len(payload) != frames * -(-prior.num_tokens * bits // 8):
        raise StreamError(f"a stored payload of {frames} frames is {frames * -(-prior.num_tokens * bits // 8)} "
                          f"bytes; this one is {len(payload)}")
    limit = None if head["stored"] else max_frames(prior, len(payload))
    if limit is not None and frames > limit:
        note = ("" if isinstance(prior, AdaptivePrior) else "; segments written before issue 39's work budget may "
                "exceed it: re-encode them")
        raise StreamError(f"header says {frames} frames; a {len(payload)}-byte payload holds at most {limit}{note}")
    try:
        if head["stored"]:
            tokens = unpack(payload, frames, prior.num_tokens, bits)
        else:
            tokens = prior.decode_payload(payload, frames)
        prior.check_tokens(tokens)
    except (RuntimeError, ValueError, IndexError, MemoryError) as e:
        raise StreamError(f"segment does not decode with this prior ({type(e).__name__}: {e})") from e
    if tokens_crc32(tokens) != head["token_crc"]:
        raise StreamError("decoded tokens fail their checksum: the segment is damaged, or the prior evaluated to "
                          "different probabilities here than where the segment was encoded (different torch build, "
                          "CPU kernels or device)")
    return tokens


def save_prior(prior: Prior, path: str | os.PathLike, **extra) -> None:
    """Weights-only file: the kind, constructor arguments and tensors (loads with ``weights_only=True``)."""
    with atomic_write(path) as tmp:
        torch.save({"format": PRIOR_FORMAT, "kind": prior.kind, "init_args": prior.init_args,
                    "state_dict": prior.state_dict(), "prior_id": prior.prior_id(), **extra}, tmp)


def load_prior(path: str | os.PathLike) -> Prior:
    """A prior written by ``save_prior``; ``ValueError`` ("not a prior file") for anything else."""
    try:
        with open_checked(path, MAX_PRIOR_BYTES) as f:
            blob = torch.load(f, map_location="cpu", weights_only=True)
    except OSError:
        raise  # missing or unreadable: that error is already clear
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError, ...: not torch's text, which advises
        # weights_only=False (running whatever code the file holds)
        raise ValueError(f"{path} is not a prior file ({PRIOR_FORMAT}): it does not load as weights-only torch "
                         f"data ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != PRIOR_FORMAT:
        raise ValueError(f"{path} is not a prior file ({PRIOR_FORMAT})")
    try:
        args = dict(blob["init_args"])
        args["grid"] = tuple(args["grid"])
        prior = PRIORS[blob["kind"]](**args)
        prior.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a prior file ({PRIOR_FORMAT}): {type(e).__name__}: {e}") from None
    prior.eval()
    if prior.prior_id() != blob["prior_id"]:
        raise ValueError(f"{path}: parameters do not match the stored prior id (damaged file?)")
    return prior
