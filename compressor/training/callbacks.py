"""Callbacks: the exported model and a reconstruction check at the end of fit; throughput and MFU during it; a
checkpoint when a scheduler stops the fit with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytorch_lightning as pl
import torch

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from compressor.metrics import model_psnr
from compressor.training.core import export
from compressor.training.model_card import training_sections
from compressor.training.perf import matmul_peak_flops, train_flops_per_image
from compressor.utils import atomic_write, to_unit


class ExportCallback(pl.Callback):
    """At the end of fit, on rank 0: export the codec the module trained and check what was written.

    Every training module says what a user codes with (``exported()``: the model and its file name: ``model.pt``
    for per-frame tokens, ``video.pt`` for video tokens, ``remembering.pt`` for a decoder that remembers), and
    ``core.export`` writes it with its Hugging Face Hub folder, ``hub/`` (``config.json``, ``model.safetensors``,
    ``recon.png`` and a ``README.md`` card with the training data, steps and the check's numbers), ready for
    ``huggingface_hub.upload_folder``. The check codes validation frames (a video codec: the first validation clip,
    in order) through the codec API and the bit packer (encode -> pack -> unpack -> decode), so the printed numbers
    are what a user of the file gets, and the written file and folder must decode them as the trained model does.

    Args:
        out_dir: where the model file, ``recon.png`` and ``hub/`` go; defaults to the trainer's ``default_root_dir``.
        num_frames: validation frames in the check (a clip's frames, at most).
    """

    def __init__(self, out_dir: str | None = None, num_frames: int = 8):
        self.out_dir = out_dir
        self.num_frames = num_frames

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        out_dir = self.out_dir or trainer.default_root_dir
        model, filename = pl_module.exported()
        loaders = trainer.datamodule.val_dataloader() if trainer.datamodule else []
        frames = _take(loaders, self.num_frames)
        done = export(model, out_dir, filename, training_sections(trainer, pl_module), frames)
        written = ", ".join(filter(None, (done["path"], done["image"], done["hub"])))
        if done["psnr"] is None:
            print(f"saved {written} (no reconstruction check: no validation frames)")
            return
        print(f"saved {written}")
        print(f"PSNR {done['psnr']:.2f} dB on {done['frames']} validation frames at {done['bytes_per_frame']:g} "
              f"bytes/frame, through the codec API and the bit packer; the written copies decode the same")


class SigtermCheckpoint(pl.Callback):
    """SIGTERM (what schedulers send before SIGKILL) ends a fit within ``grace_s`` seconds, its last checkpoint
    loadable, on one process or many (DDP).

    Lightning's own SIGTERM handler (its signal connector) is replaced once training starts: it calls
    ``dist.broadcast`` inside the signal handler, that is at whatever point each rank happens to be, so under DDP its
    broadcast can meet another collective on the other rank (a gradient all-reduce, a barrier) and the ranks hang
    (issue 39: a 2-process CPU fit sometimes did not exit within 60 s of SIGTERM). Here the signal only sets a flag;
    every rank all-reduces that flag at the same point of every training step (``on_train_batch_end``), so all
    ranks stop at the same step whichever of them got the signal, and raise ``SIGTERMException`` together. This
    callback then saves that step's checkpoint on every rank's behalf (``trainer.save_checkpoint``, in which all
    ranks take part) as ``last.ckpt`` beside the ``ModelCheckpoint``'s (``--ckpt_path last`` resumes from it;
    ``<default_root_dir>/checkpoints`` without one), written to a temporary name and renamed, so a SIGKILL while it
    is written leaves the previous one. The process exits with 143, as a process killed by SIGTERM does, so that a
    scheduler does not take the run for finished.

    A Python signal handler runs only when the main thread is back in the interpreter, which a collective that never
    returns (issue 39 saw a 2-process CPU fit hang at its first step and ignore SIGTERM) prevents. So a watchdog
    thread reads the signal from ``signal.set_wakeup_fd``, which the interpreter writes as the signal arrives: it
    forwards SIGTERM to the DDP processes this one launched and exits the process ``grace_s`` after the signal
    should the step never end, without a new checkpoint.

    Args:
        grace_s: seconds from SIGTERM to a forced exit.
    """

    EXIT_CODE = 128 + signal.SIGTERM

    def __init__(self, grace_s: float = 25.0):
        self.grace_s = grace_s
        self.received = threading.Event()  # set by the watchdog thread as the signal arrives
        self._launcher = None
        self._wakeup: tuple[int, int] | None = None  # the pipe the interpreter writes signal numbers to
        self._previous_fd = -1

    def _install(self, trainer: pl.Trainer) -> None:
        """Replaces Lightning's SIGTERM handler (registered after ``on_fit_start``) with one that only wakes the
        watchdog; installed once, from the main thread (the only one that may set handlers)."""
        if self._wakeup is not None or threading.current_thread() is not threading.main_thread():
            return
        self.received.clear()  # a new fit
        self._launcher = trainer.strategy.launcher  # rank 0 of a DDP fit: the processes it started
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # the interpreter requires it: a signal never blocks on a full pipe
        self._wakeup = (read_fd, write_fd)
        self._previous_fd = signal.set_wakeup_fd(write_fd)
        signal.signal(signal.SIGTERM, _note_signal)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True, name="sigterm-watchdog").start()

    def _watch(self, read_fd: int) -> None:
        while True:
            data = os.read(read_fd, 64)
            if not data:  # teardown closed the write end
                os.close(read_fd)
                return
            if int(signal.SIGTERM) in data and not self.received.is_set():
                self.received.set()
                if self._launcher is not None and getattr(self._launcher, "procs", None):
                    self._launcher.kill(signal.SIGTERM)  # the other ranks stop at the same step
                timer = threading.Timer(self.grace_s, os._exit, args=(self.EXIT_CODE,))
                timer.daemon = True
                timer.start()

    # Installed at the first hook after Lightning registers its own handler: the sanity check when there is one.
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def should_stop(self, trainer: pl.Trainer) -> bool:
        """Whether any rank got SIGTERM: one all-reduce per step, at the same point on every rank."""
        flag = torch.tensor([1 if self.received.is_set() else 0], device=trainer.strategy.root_device)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.should_stop(trainer):
            raise SIGTERMException()

    def checkpoint_path(self, trainer: pl.Trainer) -> str:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return os.path.join(callback.dirpath, "last.ckpt")
        return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._uninstall()  # a fit that fails does not reach teardown; a grace timer already started keeps running
        if not isinstance(exception, SIGTERMException):
            return
        path = self.checkpoint_path(trainer)
        tmp = f"{path}.sigterm-tmp"
        trainer.save_checkpoint(tmp)  # every rank: the strategy gathers what it needs, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, path)
            print(f"SIGTERM: saved {path} at step {trainer.global_step}", flush=True)
        exception.code = self.EXIT_CODE

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._uninstall()

    def _uninstall(self) -> None:
        # Lightning's connector restores the handler it found before fit; the wakeup pipe is this callback's: closing
        # its write end ends the watchdog thread, which closes the read end.
        if self._wakeup is not None and threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._wakeup[1])
            self._wakeup = None


def _note_signal(signum, frame) -> None:
    """SIGTERM's Python handler: nothing to do here, the watchdog thread acts on the byte the interpreter wrote to
    the wakeup pipe (a handler must exist for that byte to be written)."""


def _take(loaders, n: int) -> torch.Tensor | None:
    """Up to ``n`` validation frames, uint8 (T, 3, H, W): from batches of frames, or the first clip of a batch of
    clips (B, L, 3, H, W), whose frames stay in order."""
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        return None
    batches, count = [], 0
    for batch in loaders:
        if batch.ndim == 5:  # clips: one, in order, as a video codec codes it
            return batch[0, :n]
        batches.append(batch)
        count += len(batch)
        if count >= n:
            break
    return torch.cat(batches)[:n] if batches else None


class ThroughputMonitor(pl.Callback):
    """Logs training images/s, achieved TFLOP/s and model FLOPs utilisation (``perf/mfu``).

    MFU = images/s x training FLOPs per image / (peak FLOP/s per device x devices). FLOPs per image are counted once
    with ``torch.utils.flop_counter`` at the start of fit.

    Args:
        peak_tflops: the card's peak in the training precision; if None, measured once with a matmul in the
            trainer's precision (bf16 for bf16-mixed, float16 for 16-mixed, else float32).
        log_every_n_steps: how often to log.
    """

    def __init__(self, peak_tflops: float | None = None, log_every_n_steps: int = 50):
        self.peak_tflops, self.log_every_n_steps = peak_tflops, log_every_n_steps
        self.flops_per_image = self.peak_flops = 0.0
        self._t0: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flops_per_image = train_flops_per_image(pl_module.autoencoder)
        if self.peak_tflops:
            self.peak_flops = self.peak_tflops * 1e12
        else:
            # The ceiling of the precision the matmuls run in: bf16 under bf16-mixed (8x float32 on AMX CPUs).
            precision = str(trainer.precision)
            dtype = (torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16")
                     else torch.float32)
            size = 2048 if pl_module.device.type == "cpu" else 8192  # as bench_train measures it
            self.peak_flops = matmul_peak_flops(pl_module.device, dtype, size=size, min_time=0.5)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None or trainer.global_step % self.log_every_n_steps:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        images_per_s = len(batch) * trainer.world_size / (time.perf_counter() - self._t0)
        flops = images_per_s * self.flops_per_image
        pl_module.log_dict({"perf/images_per_s": images_per_s, "perf/tflops": flops / 1e12,
                            "perf/mfu": flops / (self.peak_flops * trainer.world_size)}, on_step=True)


class ValCurve(pl.Callback):
    """Appends the validation metrics, with the images seen so far, to a JSON list after every validation.

    Budgets are counted in images (steps x batch x devices), not seconds, so curves from runs that shared the
    machine with other work stay comparable; training seconds ride along to give throughput.

    Each point also holds ``train/psnr``: the EMA model's PSNR on a fixed, evenly spread set of ``train_frames``
    training frames (the datamodule's ``train_probe``), so every curve shows the train-val gap.

    Args:
        path: the JSON file; defaults to ``<default_root_dir>/curve.json``. An existing file is continued on resume
            (points at or beyond the resumed step are dropped first).
        train_frames: training frames scored at each validation (0: none).
    """

    def __init__(self, path: str | None = None, train_frames: int = 320):
        self.path = path
        self.train_frames = train_frames
        self.points: list[dict] | None = None  # read from the file at the first validation (the step is known then)
        self._probe: torch.Tensor | None = None

    @torch.no_grad()
    def _train_psnr(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        if not self.train_frames or trainer.datamodule is None or not hasattr(trainer.datamodule, "train_probe"):
            return None
        if self._probe is None:
            self._probe = trainer.datamodule.train_probe(self.train_frames)
            if self._probe is None:
                self.train_frames = 0
                return None
        model = pl_module.ema.eval()
        scores = []
        with trainer.precision_plugin.forward_context():
            for frames in self._probe.split(trainer.datamodule.hparams.batch_size):
                x = to_unit(frames.to(pl_module.device))
                scores.append(model_psnr(model(x)["recon"], x))  # as val/psnr is computed
        return float(torch.cat(scores).mean())

    def _path(self, trainer: pl.Trainer) -> str:
        return self.path or os.path.join(trainer.default_root_dir, "curve.json")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        batch_size = trainer.datamodule.hparams.batch_size if trainer.datamodule else None
        point = {"step": trainer.global_step,
                 "images": trainer.global_step * batch_size * trainer.world_size if batch_size else None,
                 "train_seconds": pl_module.train_seconds() if hasattr(pl_module, "train_seconds") else None}
        for name, value in trainer.callback_metrics.items():
            if name.startswith("val/"):
                point[name] = float(value)
        train_psnr = self._train_psnr(trainer, pl_module)
        if train_psnr is not None:
            point["train/psnr"] = train_psnr
        path = self._path(trainer)
        if self.points is None:
            self.points = []
            if os.path.exists(path):
                with open(path) as f:
                    self.points = json.load(f)
        self.points = [p for p in self.points if p["step"] < point["step"]] + [point]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "w") as f:
            json.dump(self.points, f, indent=1)
