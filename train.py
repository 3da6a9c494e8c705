"""Train a compressor with LightningCLI.

    python train.py                                   # demo: small model on procedural scenes, CPU-sized
    python train.py fit --config configs/vit-224B.yaml --data.videos /path/to/videos
    python train.py fit --config configs/vit-224B.yaml --data.videos ... --ckpt_path last.ckpt   # resume
"""

import os
import sys

from pytorch_lightning.cli import LightningCLI

from compressor.data import FramesDataModule
from compressor.training.module import CompressorModule


def main(argv: list[str] | None = None) -> None:
    if (sys.argv[1:] if argv is None else argv) == []:  # no arguments: the demo, a small model on procedural scenes
        argv = ["fit", "--config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.yaml")]
    # Never block on a login prompt: without a key, runs are logged offline (upload later with `wandb sync`).
    if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
    LightningCLI(CompressorModule, FramesDataModule, args=argv, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
