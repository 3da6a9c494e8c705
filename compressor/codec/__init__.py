"""The codec: frames -> tokens -> frames. Needs torch, einops, safetensors and huggingface_hub (no Lightning, no PyAV,
no data code).

- ``layers``: transformer blocks, patchify, position embeddings.
- ``encoders`` / ``decoders``: the pure-ViT, conv-stem and pure-conv designs.
- ``quantizers``: FSQ, standardized FSQ and VQ; the token <-> code round trip.
- ``autoencoder``: ``Autoencoder`` (training and codec APIs), ``load``, checkpoints and Hub folders, ``model_id``.
- ``hub``: the model card of a Hub folder.
- ``packing``: ``pack`` / ``unpack`` tokens to fixed-width bytes.
"""

from compressor.codec.autoencoder import Autoencoder, load, model_id
from compressor.codec.packing import pack, unpack

__all__ = ["Autoencoder", "load", "model_id", "pack", "unpack"]
