"""Crafted ``.ctok`` segments, decoded one after another: ``python -m tests.stream_fuzz DIR``.

DIR holds ``prior-{static,factorised,temporal}.pt`` and/or ``prior-token.pt`` (each one found is fuzzed); the adaptive
prior needs no file. Each case mutates a valid segment and recomputes its CRC, so
only the decoder's own checks stand between the bytes and the rANS coder. One line per case is printed (and
flushed) before it runs, so if the process dies the last line names the case that killed it.
"""

import os
import random
import struct
import sys
import zlib

import torch

from compressor.entropy.adaptive import AdaptivePrior
from compressor.entropy.stream import HEADER_BYTES, StreamError, decode_segment, encode_segment, load_prior
from compressor.entropy.stream import FITTED_KINDS

CRC_AT = HEADER_BYTES - 4  # the header CRC covers the header's first 40 bytes and the payload
FIELDS = {"kind": (5, "B"), "coder": (6, "B"), "frames": (24, "I"), "tokens": (28, "H"), "length": (32, "I"),
          "token_crc": (36, "I")}


def moving_tokens(num_frames: int, seed: int, codebook: int = 15360) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randint(0, codebook, (128,), generator=g)]
    for _ in range(num_frames - 1):
        f = frames[-1].clone()
        redraw = torch.rand(128, generator=g) < 0.1
        f[redraw] = torch.randint(0, codebook, (int(redraw.sum()),), generator=g)
        frames.append(f)
    return torch.stack(frames)


def seal(head: bytes, payload: bytes) -> bytes:
    """A segment whose CRC matches whatever its header and payload now say."""
    head = head[:CRC_AT]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def set_field(data: bytes, field: str, value: int) -> bytes:
    offset, fmt = FIELDS[field]
    head = bytearray(data[:HEADER_BYTES])
    struct.pack_into("<" + fmt, head, offset, value)
    return seal(bytes(head), data[HEADER_BYTES:])


def with_payload(data: bytes, payload: bytes) -> bytes:
    return seal(set_field(data, "length", len(payload))[:HEADER_BYTES], payload)


def cases(data: bytes, frames: int, rng: random.Random) -> dict[str, bytes]:
    payload = data[HEADER_BYTES:]
    out = {}
    for v in sorted({0, 1, max(frames - 1, 0), frames + 1, 2 * frames, 1000, 1 << 16, 1 << 20, (1 << 32) - 1}):
        out[f"frames={v}"] = set_field(data, "frames", v)
    for v in (0, 1, 127, 129, 65535):
        out[f"tokens={v}"] = set_field(data, "tokens", v)
    for v in (0, 1, 2, 3, 4, 255):
        out[f"kind={v}"] = set_field(data, "kind", v)
    for v in (0, 1, 2, 255):
        out[f"coder={v}"] = set_field(data, "coder", v)
    out["token_crc+1"] = set_field(data, "token_crc", (zlib.crc32(b"x") + 1) & 0xFFFFFFFF)
    out["length+4, payload unchanged"] = set_field(data, "length", len(payload) + 4)
    out["payload halved"] = with_payload(data, payload[: len(payload) // 2])
    out["payload empty"] = with_payload(data, b"")
    out["payload 3 bytes"] = with_payload(data, payload[:3])
    for n in (4, 8, 4096):
        out[f"payload + {n} zero bytes"] = with_payload(data, payload + bytes(n))
    for name, fill in {"zeros": 0, "ones": 0xFF}.items():
        out[f"payload all {name}"] = with_payload(data, bytes([fill]) * len(payload))
        out[f"payload all {name}, frames=1000"] = set_field(with_payload(data, bytes([fill]) * len(payload)),
                                                            "frames", 1000)
    out["state zeroed"] = with_payload(data, bytes(8) + payload[8:])
    out["state high word zeroed"] = with_payload(data, payload[:4] + bytes(4) + payload[8:])
    for i in range(4):
        noise = bytes(rng.getrandbits(8) for _ in range(len(payload)))
        out[f"payload random {i}"] = with_payload(data, noise)
        out[f"payload random {i}, frames x2"] = set_field(with_payload(data, noise), "frames", 2 * frames)
    for i in range(24):
        if payload:
            pos = rng.randrange(len(payload))
            flipped = payload[:pos] + bytes([payload[pos] ^ (1 << rng.randrange(8))]) + payload[pos + 1 :]
            out[f"payload bit flip {i} at {pos}"] = with_payload(data, flipped)
    return out


def main(directory: str) -> None:
    rng = random.Random(0)
    adaptive = AdaptivePrior(15360, (8, 16))  # needs no file
    files = [(k, os.path.join(directory, f"prior-{k}.pt")) for k in FITTED_KINDS]
    for kind, prior in [(k, load_prior(f)) for k, f in files if os.path.exists(f)] + [("adaptive", adaptive)]:
        k = prior.codebook_size
        segments = {"moving": moving_tokens(8, seed=5, codebook=k), "random": torch.randint(0, k, (3, 128)),
                    "empty": torch.zeros(0, 128, dtype=torch.long)}
        other = encode_segment(moving_tokens(8, seed=6, codebook=k), prior)
        for name, tokens in segments.items():
            data = encode_segment(tokens, prior)
            variants = cases(data, len(tokens), rng)
            variants["another segment's payload"] = with_payload(data, other[HEADER_BYTES:])
            for case, bad in variants.items():
                print(f"{kind}/{name}/{case}\t", end="", flush=True)
                try:
                    got = decode_segment(bad, prior)
                    print("exact" if torch.equal(got, tokens) else f"WRONG TOKENS {tuple(got.shape)}", flush=True)
                except StreamError as e:
                    print(f"StreamError: {e}", flush=True)
                except Exception as e:  # noqa: BLE001 - the point is to report anything else
                    print(f"OTHER {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
