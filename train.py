"""Train a compressor with LightningCLI (compressor.training.cli): configs/base.yaml plus the overlays given.

    python train.py                                            # demo: small model on procedural scenes, CPU-sized
    python train.py fit --data.shards SHARD_DIR                # the recommended CPU recipe (configs/base.yaml)
    python train.py fit --config configs/vit-224B.yaml --data.videos /path/to/videos
    python train.py fit --config configs/vit-224B.yaml --data.videos ... --ckpt_path last.ckpt   # resume
    python train.py fit --config configs/video-224B.yaml --data.shards SHARD_DIR   # video tokens: configs/video-base.yaml
                                                                                   # plus overlays (docs/video.md)
"""

import os
import sys

from compressor.training.cli import CONFIGS, cli, is_video_config, video_cli


def main(argv: list[str] | None = None) -> None:
    if (sys.argv[1:] if argv is None else argv) == []:  # no arguments: the demo, a small model on procedural scenes
        argv = ["fit", "--config", os.path.join(CONFIGS, "demo.yaml")]
    # Never block on a login prompt: without a key, runs are logged offline (upload later with `wandb sync`).
    if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
    argv = sys.argv[1:] if argv is None else argv
    (video_cli if is_video_config(argv) else cli)(argv)


if __name__ == "__main__":
    main()
