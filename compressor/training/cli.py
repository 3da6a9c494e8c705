"""The training command line: LightningCLI over ``CompressorModule`` and ``FramesDataModule``.

Every run starts from ``configs/base.yaml`` (the plumbing every run shares and the recommended CPU model); the
``--config`` files given are overlays on it, applied in order. The frame size is set once, as ``data.image_size``,
and the model follows it.

Video runs (``video_cli``) start from ``configs/video-base.yaml`` in the same way.

``auto_precision: true`` (the bases' setting) makes a single-process CPU run time a few
training steps of its own model (a video run: of its intra model) on each CPU path before fit (bf16 autocast with
matmul or SDPA attention, float32) and train on the fastest: which wins depends on the CPU (docs/speed.md: bf16
with matmul attention on an Intel Xeon with AMX, bf16 on AMD EPYC with AVX-512 BF16, float32 on an AMD EPYC
without AVX-512, where bf16 has no fast kernels). GPUs and multi-process runs keep ``trainer.precision`` as configured.
"""

from __future__ import annotations

from typing import Literal, Optional

import os

import torch
from jsonargparse import Namespace
import pytorch_lightning as pl
import yaml
from pytorch_lightning.cli import LightningCLI

from compressor.codec.autoencoder import Autoencoder, build_part
from compressor.data.datamodule import FramesDataModule
from compressor.training.module import CompressorModule
from compressor.training.callbacks import SigtermCheckpoint
from compressor.codec.layers import set_attention_kernel
from compressor.training.perf import CPU_PATHS, fastest_cpu_path

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
BASE_CONFIG = os.path.join(CONFIGS, "base.yaml")
VIDEO_BASE_CONFIG = os.path.join(CONFIGS, "video-base.yaml")  # the base of video runs


class AutoPrecision:
    """``auto_precision``: a LightningCLI mixin that, for a single-process CPU fit, trains on whichever of the CPU
    paths (``perf.CPU_PATHS``: bf16-mixed with matmul or SDPA attention, 32-true) a short measurement on
    ``precision_probe()`` (an ``Autoencoder``) finds fastest."""

    def add_auto_precision(self, parser) -> None:
        parser.add_argument("--auto_precision", type=bool, default=False,
                            help="on a CPU, train on the fastest of perf.CPU_PATHS (bf16-mixed with matmul or SDPA "
                                 "attention, 32-true), as a short measurement finds")
        parser.add_argument("--attention_kernel", type=Optional[Literal["sdpa", "matmul"]], default=None,
                            help="how attention is computed (layers.set_attention_kernel); null: sdpa, or what "
                                 "auto_precision measures fastest. config.yaml records the kernel a fit ran with")

    def precision_probe(self) -> Autoencoder:
        raise NotImplementedError

    def instantiate_trainer(self, **kwargs):
        config = self.config[self.subcommand] if self.subcommand else self.config
        kernel = config.get("attention_kernel")
        if self.subcommand == "fit" and config.get("auto_precision") and _single_cpu_process(config.trainer):
            batch = self.datamodule.hparams.batch_size if self.datamodule is not None else 16
            # A kernel given by the user is kept: only the paths that use it are measured.
            paths = [p for p in CPU_PATHS if kernel in (None, p[1])]
            (precision, kernel), rates = fastest_cpu_path(self.precision_probe(), batch, paths=paths)
            speeds = ", ".join(f"{p}/{a} {rate:.1f} img/s" for (p, a), rate in rates.items())
            print(f"auto_precision: {precision} with {kernel} attention ({speeds}, batch {batch})", flush=True)
            config.trainer.precision = kwargs["precision"] = precision  # config.yaml records the choice
        if self.subcommand == "fit":
            config.attention_kernel = kernel = kernel or "sdpa"  # and the kernel the fit runs with
        if kernel:
            set_attention_kernel(self.model, kernel)
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, SigtermCheckpoint) for c in trainer.callbacks):  # every fit stops cleanly on SIGTERM
            trainer.callbacks.append(SigtermCheckpoint())
        return trainer


class CompressorCLI(AutoPrecision, LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.image_size")
        self.add_auto_precision(parser)

    def precision_probe(self) -> Autoencoder:
        return self.model.autoencoder


def _single_cpu_process(trainer) -> bool:
    """Whether the trainer config resolves to one process on the CPU (where ranks could never disagree)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return on_cpu and str(trainer.get("devices", "auto")) in ("auto", "1") and int(trainer.get("num_nodes", 1)) == 1


def cli(args: list[str] | None = None, run: bool = True, cli_class: type[CompressorCLI] = CompressorCLI) -> CompressorCLI:
    """Parse ``args`` (``sys.argv`` when None) on top of ``configs/base.yaml``, then run the subcommand."""
    defaults = {"default_config_files": [BASE_CONFIG]} if os.path.exists(BASE_CONFIG) else {}
    if run:
        defaults = {sub: defaults for sub in ("fit", "validate", "test", "predict")}
    return cli_class(CompressorModule, FramesDataModule, args=args, run=run, parser_kwargs=defaults,
                     save_config_kwargs={"overwrite": True})


def is_video_config(args: list[str]) -> bool:
    """Whether ``train.py ARGS`` trains video tokens: a ``--config`` file whose ``model.class_path`` is one of
    ``compressor.training.video``'s modules (the per-frame configs name no model class: theirs is fixed)."""
    for flag, path in zip(args, args[1:]):
        if flag == "--config" and os.path.isfile(path):
            with open(path) as f:
                config = yaml.safe_load(f) or {}
            model = config.get("model")
            if isinstance(model, dict) and str(model.get("class_path", "")).startswith("compressor.training.video."):
                return True
    return False


class VideoCLI(AutoPrecision, LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.init_args.image_size")
        self.add_auto_precision(parser)

    def precision_probe(self) -> Autoencoder:
        # The frozen intra model is a ViT autoencoder like the part that trains: the same precision suits both.
        return self.model.intra


def video_cli(args: list[str] | None = None, run: bool = True) -> VideoCLI:
    """LightningCLI over ``compressor.training.video``'s modules (``VideoModule``: conditional tokens;
    ``RememberModule``: a decoder that reads earlier frames' tokens) and ``ClipsDataModule``: ``configs/video-base.yaml``
    first, then the ``--config`` overlays, as ``cli`` does for per-frame runs."""
    import compressor.training.video  # noqa: F401 (the class paths video configs name)
    from compressor.data.clips import ClipsDataModule

    defaults = {"default_config_files": [VIDEO_BASE_CONFIG]} if os.path.exists(VIDEO_BASE_CONFIG) else {}
    if run:
        defaults = {sub: defaults for sub in ("fit", "validate", "test", "predict")}
    return VideoCLI(pl.LightningModule, ClipsDataModule, subclass_mode_model=True, args=args, run=run,
                    parser_kwargs=defaults, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


class _ParseOnly(CompressorCLI):
    def instantiate_classes(self) -> None:  # the parsed config is all that is wanted
        pass


def resolve(args: list[str]) -> Namespace:
    """The config that ``train.py fit ARGS`` runs (``configs/base.yaml``, then the ``--config`` overlays and
    ``--key value`` overrides in ARGS, links applied), parsed by the same parser, with nothing built.

    Benchmarks and experiments read their models and budgets from it, so base + overlays mean the same everywhere.
    """
    return cli(args, run=False, cli_class=_ParseOnly).config


def autoencoder_from(config: Namespace) -> Autoencoder:
    """The ``Autoencoder`` of a resolved config's ``model`` section, as ``CompressorModule`` builds it, without the
    training module around it (no EMA copy, no loss)."""
    model = config.model
    parts = {name: build_part({"class_path": model[name].class_path, "init_args": model[name].init_args.as_dict()})
             for name in ("encoder", "quantizer", "decoder")}
    return Autoencoder(**parts, image_size=tuple(model.image_size), max_bytes_per_frame=model.max_bytes_per_frame)
