"""Token latents: the encode pipeline that writes them, the shards that hold them, and ``LatentDataset``.

- ``pipeline``: ``encode_videos`` (what ``encode.py`` runs): videos -> verified token shards + ``manifest.json``.
- ``shards``: the shard format, its checks (CRCs, manifests, tar end markers) and ``read_segments``.
- ``dataset``: ``LatentDataset``, windows of tokens for world models; the entropy coder is imported only when a
  coded sample is met.
- ``card``: the dataset card (``README.md``) that ``encode.py`` writes into every output folder.
- ``commavq``: commaVQ's ``.npy`` layout, read (via ``read_segments``) and written (``python -m
  compressor.latents.commavq``).
- ``preview``: ``python -m compressor.latents.preview`` decodes latents back to a side-by-side video.
"""

from compressor.latents.dataset import LatentDataset
from compressor.latents.shards import DamagedShardError, MissingPriorError, expand_urls, read_segments

__all__ = ["LatentDataset", "DamagedShardError", "MissingPriorError", "expand_urls", "read_segments"]
