import contextlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from compressor.data.frame_shards import FrameShards
from tests.ddp_helpers import frame_ids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_frame_shards(directory, counts, split="train", size=(128, 256), start=0) -> int:
    """Shards in compressor.tools.make_shards' format; frame k carries its id in its first two pixels."""
    os.makedirs(directory, exist_ok=True)
    k = start
    for s, n in enumerate(counts):
        with wds.TarWriter(os.path.join(directory, f"{split}-clip{s}-000.tar")) as tar:
            for _ in range(n):
                frame = np.random.default_rng(k).integers(0, 256, (3, *size), dtype=np.uint8)
                frame[:, 0, 0], frame[:, 0, 1] = k % 256, k // 256
                tar.write({"__key__": f"f{k:06d}", "frame.npy": frame, "meta.json": json.dumps({"frame": k}).encode()})
                k += 1
    return k


def rank_batches(ds, rank, world, monkeypatch):
    monkeypatch.setattr("compressor.data.frame_shards.rank_world", lambda: (rank, world))
    return [frame_ids(b) for b in DataLoader(ds, batch_size=ds.batch_size, num_workers=ds.num_workers, drop_last=True)]


@pytest.mark.parametrize("interleave", [False, True])
def test_every_frame_once_per_epoch_across_ranks_and_workers(tmp_path, monkeypatch, interleave):
    total = write_frame_shards(tmp_path, [7, 5, 9, 4], size=(8, 8))  # 25 frames, 4 consumers of 3 batches of 2
    ds = FrameShards([str(p) for p in sorted(tmp_path.glob("*.tar"))], batch_size=2, num_workers=2, shuffle=True,
                     seed=3, interleave=interleave)
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        per_rank = [rank_batches(ds, r, 2, monkeypatch) for r in range(2)]
        assert [len(b) for b in per_rank] == [6, 6]  # equal batch counts: DDP ranks never wait on each other
        ids = [i for batches in per_rank for b in batches for i in b]
        assert len(ids) == len(set(ids)) == 24 and set(ids) <= set(range(total))
        assert len(ds) == 12  # frames per rank per epoch
        epochs.append(ids)
    assert epochs[0] != epochs[1]  # a new order each epoch
    ds.set_epoch(1)
    assert [i for r in range(2) for b in rank_batches(ds, r, 2, monkeypatch) for i in b] == epochs[1]  # seeded


@pytest.mark.parametrize("interleave", [False, True])
def test_a_resumed_epoch_continues_exactly_where_it_stopped(tmp_path, monkeypatch, interleave):
    write_frame_shards(tmp_path, [10, 13, 9], size=(8, 8))
    ds = FrameShards([str(p) for p in sorted(tmp_path.glob("*.tar"))], batch_size=2, num_workers=3, shuffle=True,
                     seed=0, interleave=interleave)
    ds.set_epoch(4)
    full = rank_batches(ds, 1, 2, monkeypatch)
    for done in (0, 1, 2, 4, len(full)):
        ds.set_epoch(4, skip_batches=done)
        assert rank_batches(ds, 1, 2, monkeypatch) == full[done:]


def test_interleaving_gives_each_rank_the_same_frames_in_another_order(tmp_path, monkeypatch):
    # 36 frames, 4 consumers of 8: no shard holds a whole range, so ranges cut shards and each spans 2 or more.
    write_frame_shards(tmp_path, [3, 5, 2, 4, 3, 6, 2, 5, 3, 3], size=(8, 8))
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    plain, mixed = (FrameShards(urls, batch_size=2, num_workers=2, shuffle=True, seed=1, buffer_size=1,
                                interleave=interleave) for interleave in (False, True))
    for epoch in range(2):
        plain.set_epoch(epoch), mixed.set_epoch(epoch)
        for rank in range(2):
            a = [i for b in rank_batches(plain, rank, 2, monkeypatch) for i in b]
            b = [i for b in rank_batches(mixed, rank, 2, monkeypatch) for i in b]
            # The same slice of the same shard order: what a rank trains on does not depend on the option.
            assert sorted(a) == sorted(b) and len(b) == len(set(b)) == len(mixed) == 16
            assert a != b  # a buffer of 1 keeps the read order, so this is the interleaving itself


def shards_per_batch(ds, monkeypatch) -> float:
    """Mean distinct shards in a batch, for shards of 64 frames (frame k is from shard k // 64)."""
    return float(np.mean([len({i // 64 for i in b}) for b in rank_batches(ds, 0, 1, monkeypatch)]))


def test_interleaving_puts_many_shards_in_each_batch(tmp_path, monkeypatch):
    # 8 clips of 64 frames and a buffer of half a clip: read in order, a batch is one or two clips, as measured on
    # the 21 training clips with their 512-frame buffer.
    write_frame_shards(tmp_path, [64] * 8, size=(8, 8))
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    plain, mixed = (FrameShards(urls, batch_size=16, shuffle=True, seed=0, buffer_size=32, interleave=interleave)
                    for interleave in (False, True))
    plain.set_epoch(0), mixed.set_epoch(0)
    # 16 independent draws from 8 equal shards hold 7.1 of them on average; read in order a batch holds about 2.
    assert shards_per_batch(plain, monkeypatch) <= 3
    assert shards_per_batch(mixed, monkeypatch) >= 6


def test_interleaving_spreads_a_short_shard_over_the_whole_range(tmp_path, monkeypatch):
    # Draws proportional to the frames left make every merge equally likely, so the 4 frames of the short shard
    # sit anywhere in the 64 (mean position 31.5). Choosing among the shards uniformly would use them up in the
    # first few draws. A buffer of 1 yields frames in the order they are read.
    write_frame_shards(tmp_path, [4, 60], size=(8, 8))
    ds = FrameShards([str(p) for p in sorted(tmp_path.glob("*.tar"))], batch_size=16, shuffle=True, seed=0,
                     buffer_size=1, interleave=True)
    positions = []
    for epoch in range(20):
        ds.set_epoch(epoch)
        ids = [i for b in rank_batches(ds, 0, 1, monkeypatch) for i in b]
        positions += [p for p, i in enumerate(ids) if i < 4]
    assert len(positions) == 80 and 20 < np.mean(positions) < 44


def test_interleaving_is_for_training_only(tmp_path):
    write_frame_shards(tmp_path, [4], size=(8, 8))
    with pytest.raises(ValueError, match="shuffle"):
        FrameShards([str(p) for p in tmp_path.glob("*.tar")], batch_size=2, shuffle=False, interleave=True)


TRAIN = [sys.executable, os.path.join(REPO, "train.py"), "fit", "--config", os.path.join(REPO, "configs", "demo.yaml"),
         "--model.encoder.init_args.dim", "32", "--model.encoder.init_args.depth", "1",
         "--model.encoder.init_args.heads", "2", "--model.decoder.init_args.dim", "48",
         "--model.decoder.init_args.depth", "1", "--model.decoder.init_args.heads", "2",
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "10",
         "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "2", "--model.warmup_steps", "2",
         "--data.batch_size", "2", "--data.num_workers", "1"]


# A fit of 10 steps takes about a minute on 2 idle cores; a niced test beside a training run gets a few percent of
# them (one such run once passed 300 s). On a timeout the whole process group is killed, so no rank outlives it.
FIT_TIMEOUT_S = 1200


def run_in_own_group(cmd: list[str], env: dict, log_path, timeout_s: float) -> tuple[int | None, str]:
    """Runs ``cmd`` in its own process group (which a test's SIGKILL takes down whole), its output to ``log_path``;
    returns its exit code (None after ``timeout_s``, every process of the group then killed) and its output."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the other rank too, whether or not the launcher exited
            proc.wait()
    with open(log_path) as f:
        return code, f.read()


@pytest.mark.slow
def test_two_process_ddp_fit_kill_and_resume(tmp_path):
    """2 CPU processes over gloo: an uninterrupted fit, and a fit killed mid-epoch then resumed, train on the
    same frames at every step and end at the same step with the same weights."""
    shards = tmp_path / "shards"
    write_frame_shards(shards, [12, 9, 11])  # 32 frames: 16 per rank per epoch = 8 steps of 2; 10 steps cross one
    write_frame_shards(shards, [6], split="val", start=1000)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": REPO}

    def fit(name, *extra, kill_at_step=None):
        out = tmp_path / name
        os.makedirs(out, exist_ok=True)
        cmd = [*TRAIN, "--data.shards", str(shards), "--trainer.default_root_dir", str(out),
               "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
               f"--trainer.callbacks.dirpath={out / 'ckpt'}", "--trainer.callbacks.save_last=true",
               "--trainer.callbacks.every_n_train_steps=1",
               "--trainer.callbacks+=tests.ddp_helpers.RecordFrames", f"--trainer.callbacks.path={out}", *extra]
        if kill_at_step is not None:
            cmd.append(f"--trainer.callbacks.kill_at_step={kill_at_step}")
        code, log = run_in_own_group(cmd, env, out / "log.txt", FIT_TIMEOUT_S)
        assert code == (0 if kill_at_step is None else -signal.SIGKILL), log[-3000:]
        return out

    ref = fit("ref")
    run = fit("run", kill_at_step=5)  # mid-epoch: an epoch is 8 steps (16 frames per rank, batches of 2)
    assert torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 5
    fit("run", "--ckpt_path", str(run / "ckpt" / "last.ckpt"))

    def steps(out, rank):
        rows = [json.loads(line) for line in open(out / f"frames-rank{rank}.jsonl")]
        return {r["step"]: r["ids"] for r in rows}  # a re-run step after the kill overwrites the killed one

    for rank in range(2):
        assert sorted(steps(ref, rank)) == list(range(10))
        assert steps(run, rank) == steps(ref, rank), f"rank {rank} trained on other frames after the resume"
    final_ref = torch.load(ref / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    final_run = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final_ref["global_step"] == final_run["global_step"] == 10
    for key, value in final_ref["state_dict"].items():  # EMA included
        assert torch.allclose(value.float(), final_run["state_dict"][key].float(), atol=1e-5), key


def test_too_few_frames_for_one_batch_per_worker_is_a_clear_error(tmp_path):
    from compressor.data.datamodule import FramesDataModule

    write_frame_shards(tmp_path, [5], size=(8, 8))
    dm = FramesDataModule(shards=str(tmp_path), batch_size=4, num_workers=2)
    dm.setup("fit")
    with pytest.raises(ValueError, match="cannot fill one batch of 4 for each of 2 ranks x workers"):
        dm.train_dataloader()


def test_a_yaml_setting_turns_interleaving_on_for_training_shards_only(tmp_path):
    from jsonargparse import ArgumentParser

    from compressor.data.datamodule import FramesDataModule

    write_frame_shards(tmp_path, [5, 6], size=(8, 8))
    write_frame_shards(tmp_path, [4], split="val", size=(8, 8), start=100)
    parser = ArgumentParser()
    parser.add_class_arguments(FramesDataModule, "data")  # as LightningCLI reads data.* from a config
    config = parser.parse_args(["--data.shards", str(tmp_path), "--data.interleave_shards", "true",
                                "--data.image_size", "[8, 8]", "--data.batch_size", "2"])
    dm = FramesDataModule(**config.data)
    dm.setup("fit")
    assert dm.train_frames.interleave and not dm.val_dataloader().dataset.interleave
    assert not FramesDataModule(shards=str(tmp_path)).hparams.interleave_shards  # off unless asked for


@pytest.mark.slow  # a real fit in a subprocess: a minute or more on a loaded CPU
@pytest.mark.parametrize("devices", [1, 2])
def test_sigterm_ends_a_fit_within_30_s_and_its_last_checkpoint_loads(tmp_path, devices):
    """SIGTERM (what a scheduler sends first) to the fit's main process once its first checkpoint exists: the fit
    (one process, or 2 CPU processes over gloo, to which the fit forwards the signal) ends within 30 s with exit
    code 143, and ``last.ckpt`` loads, through Lightning and through the codec API."""
    import time

    import compressor

    shards = tmp_path / "shards"
    write_frame_shards(shards, [16])
    write_frame_shards(shards, [4], split="val", start=1000)
    out = tmp_path / "run"
    last = out / "ckpt" / "last.ckpt"
    cmd = [*TRAIN, "--data.shards", str(shards), "--trainer.default_root_dir", str(out), "--trainer.max_steps",
           "100000", "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
           "--data.num_workers", "0",
           "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
           f"--trainer.callbacks.dirpath={out / 'ckpt'}", "--trainer.callbacks.save_last=true",
           "--trainer.callbacks.every_n_train_steps=1"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": REPO}
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + FIT_TIMEOUT_S  # to the first checkpoint, however loaded the CPU
            while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert last.exists(), (tmp_path / "log.txt").read_text()[-3000:]
            sent = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = (tmp_path / "log.txt").read_text()
    assert took < 30 and code == 143, (took, code, text[-3000:])
    assert "SIGTERM: saved" in text, text[-3000:]
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert step >= 1
    model = compressor.load(last)
    assert model.encode(torch.randint(0, 256, (1, 3, 128, 256), dtype=torch.uint8)).shape == (1, 128)
