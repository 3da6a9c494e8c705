"""A callback the distributed tests load into train.py: it records which frames each rank trains on at each step."""

import json
import os
import signal

import pytorch_lightning as pl


def frame_ids(batch) -> list[int]:
    """The test shards carry each frame's id in its first two pixels."""
    return (batch[:, 0, 0, 0].long() + 256 * batch[:, 0, 0, 1].long()).tolist()


class RecordFrames(pl.Callback):
    """Appends {step, ids} per training batch to ``path/frames-rank{r}.jsonl``; with ``kill_at_step`` >= 0, rank 0
    SIGKILLs the whole job (its process group) when that step is about to run, as a node failure would."""

    def __init__(self, path: str, kill_at_step: int = -1):
        self.path, self.kill_at_step = path, kill_at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.global_step == self.kill_at_step:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        with open(os.path.join(self.path, f"frames-rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "ids": frame_ids(batch)}) + "\n")
