"""Token latents: the encode pipeline that writes them, the shards that hold them, and ``LatentDataset``.

- ``pipeline``: ``encode_videos`` (what ``encode.py`` runs): videos -> verified token shards + ``manifest.json``.
- ``find``: ``expand_urls`` (what a caller's folders, globs, lists and ``pipe:`` commands name; a file name never
  runs as a command) and the checks of those files against their manifests.
- ``shards``: the shard format, its checks (CRCs, manifests, tar end markers), commaVQ's ``.npy`` files, and
  ``read_segments`` over both.
- ``dataset``: ``LatentDataset``, windows of tokens for world models; the entropy coder is imported only when a
  coded sample is met.
- ``card``: the dataset card (``README.md``) that ``encode.py`` writes into every output folder.
- ``commavq``: export to commaVQ's ``.npy`` layout (``python -m compressor.tools.commavq``).

Importing this package loads no model code, no Lightning, no Hub client and no video decoder (tests/test_imports.py).
"""

from compressor.latents.dataset import LatentDataset
from compressor.latents.find import expand_urls
from compressor.latents.shards import DamagedShardError, MissingPriorError, read_segments

__all__ = ["LatentDataset", "DamagedShardError", "MissingPriorError", "expand_urls", "read_segments"]
