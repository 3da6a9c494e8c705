"""Old path of ``python -m compressor.tools.experiments`` (scripts and docs call ``python -m compressor.experiments``)."""

from compressor.tools.experiments import *  # noqa: F401,F403
from compressor.tools.experiments import main

if __name__ == "__main__":
    main()
