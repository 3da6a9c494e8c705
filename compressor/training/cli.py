"""The training command line: LightningCLI over ``CompressorModule`` and ``FramesDataModule``.

Every run starts from ``configs/base.yaml`` (the plumbing every run shares and the recommended CPU model); the
``--config`` files given are overlays on it, applied in order. The frame size is set once, as ``data.image_size``,
and the model follows it.
"""

from __future__ import annotations

import os

from pytorch_lightning.cli import LightningCLI

from compressor.data.datamodule import FramesDataModule
from compressor.training.module import CompressorModule

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
BASE_CONFIG = os.path.join(CONFIGS, "base.yaml")


class CompressorCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.image_size")


def cli(args: list[str] | None = None, run: bool = True) -> CompressorCLI:
    """Parse ``args`` (``sys.argv`` when None) on top of ``configs/base.yaml``, then run the subcommand."""
    defaults = {"default_config_files": [BASE_CONFIG]} if os.path.exists(BASE_CONFIG) else {}
    if run:
        defaults = {sub: defaults for sub in ("fit", "validate", "test", "predict")}
    return CompressorCLI(CompressorModule, FramesDataModule, args=args, run=run, parser_kwargs=defaults,
                         save_config_kwargs={"overwrite": True})
