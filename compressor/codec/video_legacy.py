"""Conditional models saved before ``ConditionalCodec`` was composed of parts (until 2026-12-06), read as today's.

Those files (``video.pt``'s ``inter``, a video Hub folder's ``config.json`` ``inter`` and its ``inter.`` weights) hold
the arguments of a hand-built ViT (``enc_dim``, ``dec_depth``, ``overlap``, ...) and its weights by their old names.
It was exactly a ``ViTEncoder`` reading 6 channels and a conditional ViT decoder, so the conversion is a renaming,
plus one reordering: the old encoder embedded the frame's patch and the reference's patch side by side, a 6-channel
``ViTEncoder`` embeds each pixel's 6 channels together. The decoder's computation is unchanged, so stored tokens
decode to the same frames; encoding sums the same products in another order (float rounding only).
"""

from __future__ import annotations

from torch import Tensor

# The old constructor's arguments and defaults (files written before motion and overlap existed lack them).
ARGUMENTS = {"image_size": [128, 256], "patch_size": 16, "merge": 1, "enc_dim": 256, "enc_depth": 4, "enc_heads": 4,
             "dec_dim": 384, "dec_depth": 6, "dec_heads": 6, "motion": False, "overlap": False}
# The old model asserted no budget; every one trained had at most 128 tokens of 14 bits (224 B).
BUDGET = 224
# Old weight names -> new, the first matching prefix.
RENAMES = (("enc_embed.", "encoder.embed."), ("encoder.", "encoder.transformer."), ("ref_embed.", "decoder.ref_embed."),
           ("decoder.", "decoder.transformer."), ("head.", "decoder.head."), ("blend.", "decoder.blend."),
           ("flow.", "decoder.flow."))


def is_legacy(config) -> bool:
    return isinstance(config, dict) and "init_args" in config and "encoder" not in config


def upgrade_config(config, where: str):
    """An old conditional model's ``{init_args, quantizer}`` -> today's ``ConditionalCodec.export_config()``; any
    other value passes through (today's checks judge it). ``ValueError`` for arguments the old model did not have."""
    if not is_legacy(config):
        return config
    args = config["init_args"]
    if not isinstance(args, dict):
        raise ValueError(f"not a compressor checkpoint: {where}: init_args is not a dict")
    if unknown := sorted(set(args) - set(ARGUMENTS)):
        raise ValueError(f"not a compressor checkpoint: {where}.{unknown[0]}: no such argument")
    a = {**ARGUMENTS, **args}
    if type(a["overlap"]) is not bool:
        raise ValueError(f"not a compressor checkpoint: {where}.overlap is {a['overlap']!r}, not true or false")
    decoder = "ConditionalViTOverlapDecoder" if a["overlap"] else "ConditionalViTDecoder"
    patch = a["patch_size"]
    return {"image_size": a["image_size"], "merge": a["merge"], "max_bytes_per_frame": BUDGET,
            "encoder": {"class_path": "compressor.codec.encoders.ViTEncoder",
                        "init_args": {"patch_size": patch, "dim": a["enc_dim"], "depth": a["enc_depth"],
                                      "heads": a["enc_heads"], "in_channels": 6}},
            "quantizer": config.get("quantizer"),
            "decoder": {"class_path": f"compressor.codec.decoders.{decoder}",
                        "init_args": {"patch_size": patch, "dim": a["dec_dim"], "depth": a["dec_depth"],
                                      "heads": a["dec_heads"], "motion": a["motion"]}}}


def upgrade_state(config, state):
    """An old conditional model's weights (``config`` is its old config) -> today's names and layout; anything else
    passes through. Weights of unexpected shapes are renamed only: the shape check that follows refuses them."""
    if not (is_legacy(config) and isinstance(state, dict)):
        return state
    p2 = config["init_args"].get("patch_size", ARGUMENTS["patch_size"]) ** 2
    out = {}
    for name, w in state.items():
        new = next((n + name[len(o):] for o, n in RENAMES if name.startswith(o)), name)
        if name == "enc_embed.weight" and isinstance(w, Tensor) and w.ndim == 2 and w.shape[1] == 6 * p2:
            # (D, [frame (p q c), reference (p q c)]) -> (D, (p q [frame c, reference c])), patchify's 6-channel order
            w = w.reshape(len(w), 2, p2, 3).transpose(1, 2).reshape(len(w), 6 * p2)
        out[new] = w
    return out
