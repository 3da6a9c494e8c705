"""Lossless entropy coding of token segments with learned priors (the command line is ``python -m compressor.tools.entropy``).

    prior = load_prior("runs/x/prior-temporal.pt")
    data = encode_segment(tokens, prior)      # int (T, 128) -> bytes: 44-byte header + rANS payload
    tokens = decode_segment(data, prior)      # exact, or StreamError
"""

from compressor.entropy.priors import FactorisedPrior, Prior, StaticPrior, TemporalPrior
from compressor.entropy.token_prior import TokenPrior
from compressor.entropy.stream import (PriorMismatchError, StreamError, decode_segment, encode_segment, load_prior,
                                       read_header, save_prior)

__all__ = ["FactorisedPrior", "Prior", "StaticPrior", "TemporalPrior", "TokenPrior", "PriorMismatchError", "StreamError",
           "decode_segment", "encode_segment", "load_prior", "read_header", "save_prior"]
