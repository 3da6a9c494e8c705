"""Token latents: the encode pipeline that writes them, the shards that hold them, and ``LatentDataset``.

- ``pipeline``: ``encode_videos`` (what ``encode.py`` runs): videos -> verified token shards + ``manifest.json``;
  ``writer``: the output folder's lock, shards written under temporary names, a full disk reported.
- ``find``: ``expand_urls`` (what a caller's folders, globs, lists and ``pipe:`` commands name; a file name never
  runs as a command) and the checks of those files against their manifests.
- ``shards``: the shard format and its checks (tar end markers, digests), and ``read_segments`` over shards and
  commaVQ-layout files; ``samples``: one sample (key, sealed json, tokens) and its checks; ``manifest``: the
  manifests beside the shards.
- ``dataset``: ``LatentDataset``, windows of tokens for world models; the entropy coder is imported only when a
  coded sample is met.
- ``card``: the dataset card (``README.md``) that ``encode.py`` writes into every output folder.
- ``commavq``: reading commaVQ's ``.npy`` layout (exporting to it: ``python -m compressor.tools.commavq``).
- ``groups``: video-mode latents (groups of intra and conditional frames) and the fields each format's samples carry.

Importing this package loads no model code, no Lightning, no Hub client and no video decoder (tests/test_imports.py).
"""

from compressor.latents.dataset import LatentDataset
from compressor.latents.find import expand_urls
from compressor.latents.samples import DamagedShardError, MissingPriorError
from compressor.latents.shards import read_segments

__all__ = ["LatentDataset", "DamagedShardError", "MissingPriorError", "expand_urls", "read_segments"]
