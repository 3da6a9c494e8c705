"""Frame shards for training, from the repository root: ``python data/make_shards.py --input VIDEOS --output
data/shards/NAME``. The same command as ``python -m compressor.tools.make_shards`` (``compressor-make-shards``);
see data/README.md for which data fits and how to prepare it."""

import sys

from compressor.tools.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
