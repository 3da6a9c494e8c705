"""Old path of ``python -m compressor.tools.evaluate`` (scripts and docs call ``python -m compressor.evaluate``)."""

from compressor.tools.evaluate import *  # noqa: F401,F403
from compressor.tools.evaluate import main

if __name__ == "__main__":
    main()
