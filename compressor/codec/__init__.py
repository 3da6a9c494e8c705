"""The codec: frames -> tokens -> frames. Needs torch, einops, safetensors and huggingface_hub (no Lightning, no PyAV,
no data code). Import the module you need; this package imports nothing, so ``compressor.codec.packing`` stays light.

- ``layers``: transformer blocks, patchify, position embeddings.
- ``encoders`` / ``decoders``: the pure-ViT, conv-stem and pure-conv designs.
- ``quantizers``: FSQ, standardized FSQ and VQ; the token <-> code round trip.
- ``autoencoder``: ``Autoencoder`` (training and codec APIs), ``load``, its ``.pt`` files and Hub folders.
- ``checkpoint``: what a model file may hold and how it is checked before anything is built; ``model_id``.
- ``hub``: the Hub folder (``HubFolder``: checked ``save_pretrained`` / ``from_pretrained``) and its model cards.
- ``clips``: one clip API for every codec: ``FrameCodec`` gives a per-frame model ``VideoCodec``'s
  ``encode_clip`` / ``decode_clip`` with groups of one, ``clip_codec`` picks it.
- ``video``: conditional frames (``ConditionalCodec``, composed of an encoder, a quantizer and a conditional decoder)
  and ``VideoCodec`` (groups of an intra frame and conditional frames); ``video_legacy`` reads older video files;
  ``remember``: ``RememberingDecoder``, per-frame tokens decoded with the frames before them.
- ``packing``: the storage format, a leaf that imports only numpy and torch: ``pack`` / ``unpack`` tokens to
  fixed-width bytes, ``token_bits``, ``tokens_crc32``.
"""
