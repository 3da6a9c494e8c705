"""Token latents for world models: ``LatentDataset`` streams fixed-length windows of frame tokens.

It reads the shards that ``encode.py`` writes (``tokens.npy`` uint16 (T, 128) + ``json`` per video segment) and
commaVQ-layout ``*.npy`` files, one per segment: commaVQ's own (int16 (1200, 8, 16) or int64 (1200, 128)) and our
exports (``compressor.latents.commavq``), verified as ``compressor.latents.shards`` describes. Video-mode shards
(``compressor.latents.groups``) give clips that start at an intra frame, so each decodes alone.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import IterableDataset

from compressor.latents.groups import frame_tokens, is_video, window_starts
from compressor.latents.find import check_against_manifests, expand_urls, manifest_model_ids
from compressor.latents.samples import DamagedShardError, segment_model_id
from compressor.latents.shards import read_segments
from compressor.utils import buffer_shuffle, consumer

if TYPE_CHECKING:  # the entropy coder is imported only when a prior is given
    from compressor.entropy.priors import Prior


class LatentDataset(IterableDataset):
    """Windows of ``seq_len`` consecutive frames of tokens, never crossing a segment boundary.

    Items are dicts: ``tokens`` int64 (T, N), ``source`` (str), ``segment`` (int), ``frame_index`` int64 (T,)
    (frame indices in the source video) and ``model_id`` (str: the model that made the tokens; ``"commavq"`` for
    commaVQ's own files, ``""`` where the data do not say).

    Video-mode tokens (``encode.py`` with a video codec) come as clips that start at an intra frame, so each
    decodes alone (``VideoCodec.decode_clip``): windows start every ``stride`` frames, which must be a multiple of
    the group length (``ValueError`` otherwise; unset, one clip per group). Their items also carry
    ``frame_types`` (str, ``"IPPP..."``) and ``frame_tokens`` int64 (T,): a ``P`` row of ``tokens`` holds its
    ``frame_tokens`` tokens first, then zeros. A clip may be shorter than a group.

    Tokens of different models are different vocabularies: data of more than one model id raise ``ValueError``
    (from the manifests at construction, else when the first segment of another model is read) unless
    ``model_ids`` lists the ids the caller accepts.

    Work is split by segment, round-robin over (DDP rank x DataLoader worker), in an order that every consumer
    derives from the same seed and epoch, so each window appears exactly once per epoch across all of them.

    Args:
        shards: latent shards (directory, glob, ``{a..b}`` pattern, ``pipe:`` URL, commaVQ ``*.npy``, or a list).
        seq_len: frames per window.
        stride: frames between the starts of consecutive windows; None: 1, or the group length for video-mode
            tokens.
        shuffle: shuffle segment order (seeded, per epoch) and windows (within a buffer).
        seed: base seed of the shuffles.
        epoch_length: if set, each consumer yields at most this many windows per epoch.
        skip_damaged: warn about, count and skip damaged samples and shards (``damaged``, ``skipped_samples``)
            instead of raising ``DamagedShardError``. Counts are per process: DataLoader workers keep their own.
        buffer_size: windows held for shuffling.
        prior: a prior file (or ``Prior``) to decode entropy-coded samples (``tokens.ctok``) with; without it,
            samples are read from their plain ``tokens.npy``, and samples that hold only coded tokens are decoded
            if the adaptive prior coded them (it needs no file; ``MissingPriorError`` for the fitted priors).
        model_ids: the model ids whose tokens may be read together; None: those of one model only, whichever.

    Where a ``manifest.json`` lies beside the shards (encode.py's output, commaVQ exports), it is the truth: each
    shard is checked against its sha256, size and sample count, a shard it does not list is refused, and so is a
    missing one that it lists, whether a directory, a glob or a list was given. Without one, a warning says that
    missing shards cannot be detected. Local files named twice are read once.
    """

    def __init__(self, shards: str | Sequence[str], seq_len: int = 16, stride: int | None = None,
                 shuffle: bool = False, seed: int = 0, epoch_length: int | None = None, skip_damaged: bool = False,
                 buffer_size: int = 1000,
                 prior: str | os.PathLike | Prior | None = None, model_ids: Sequence[str] | None = None):
        super().__init__()
        if seq_len < 1 or (stride is not None and stride < 1):
            raise ValueError(f"seq_len and stride must be >= 1, got {seq_len}, {stride}")
        self.seq_len, self.stride, self.shuffle, self.seed = seq_len, stride, shuffle, seed
        self.epoch_length, self.skip_damaged, self.buffer_size = epoch_length, skip_damaged, buffer_size
        self.epoch = 0
        self.damaged: list[str] = []  # shards found damaged, in whole or in part
        self.skipped_samples = 0
        if isinstance(prior, (str, os.PathLike)):
            from compressor.entropy.stream import load_prior  # only readers of coded tokens need the coder

            prior = load_prior(prior)
        self.prior = prior
        urls = expand_urls(shards)
        self.expected, problems = check_against_manifests(shards, urls)
        for url, problem in problems:
            self._damaged(url, problem)
        self.urls = [url for url in urls if url not in self.damaged]
        self.model_ids = None if model_ids is None else set(model_ids)
        self.model_id: str | None = None  # the one model read so far, where model_ids is None
        for directory, found in manifest_model_ids(self.urls).items():
            self._check_model(found, directory)

    def _check_model(self, found: str, where: str) -> None:
        """Refuse tokens of a model the caller did not accept, or, without ``model_ids``, of a second model."""
        if self.model_ids is not None:
            if found not in self.model_ids:
                raise ValueError(f"{where} holds tokens of model {found or '(unnamed)'}, not of the accepted "
                                 f"model_ids {sorted(self.model_ids)}")
        elif self.model_id is None:
            self.model_id = found
        elif found != self.model_id:
            raise ValueError(f"{where} holds tokens of model {found or '(unnamed)'} and the data read before hold "
                             f"tokens of model {self.model_id or '(unnamed)'}: tokens of different models are "
                             "different vocabularies; read one model's data, or pass model_ids=[...] to accept "
                             "several")

    def _damaged(self, url: str, error: DamagedShardError) -> None:
        """Raise, or (skip_damaged) warn and count."""
        if not self.skip_damaged:
            raise error
        if url not in self.damaged:
            self.damaged.append(url)
        warnings.warn(f"skipping damaged data ({len(self.damaged)} shards so far): {error}", stacklevel=3)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (in the main process) to get a new shuffle."""
        self.epoch = epoch

    def _segments(self) -> Iterator[dict]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(urls)
        me, consumers = consumer()
        index = 0
        for url in urls:

            def skip_sample(error: DamagedShardError, url: str = url) -> None:
                self.skipped_samples += 1
                self._damaged(url, error)

            try:
                for segment in read_segments(url, prior=self.prior, expected=self.expected.get(url),
                                             on_damaged=skip_sample if self.skip_damaged else None):
                    self._check_model(segment_model_id(segment["meta"]), url)  # every consumer sees every segment
                    if index % consumers == me:
                        yield segment
                    index += 1
            except DamagedShardError as e:
                self._damaged(url, e)

    def _windows(self) -> Iterator[dict]:
        for segment in self._segments():
            tokens, meta = segment["tokens"], segment["meta"]
            first = int(meta.get("first_frame", 0))
            frame_index = torch.as_tensor(meta.get("frame_indices", range(first, first + len(tokens))))
            gop = meta["gop"] if is_video(meta) else None
            counts = torch.tensor(frame_tokens(meta)) if gop else None
            for start in window_starts(len(tokens), self.seq_len, self.stride or gop or 1, gop):
                end = start + self.seq_len
                item = {"tokens": tokens[start:end], "source": meta.get("source", ""),
                        "segment": int(meta.get("segment", 0)), "frame_index": frame_index[start:end],
                        "model_id": segment_model_id(meta)}
                if gop:  # the frame types and token counts of the clip, which starts at an intra frame
                    item.update(frame_types=meta["frame_types"][start:end], frame_tokens=counts[start:end])
                yield item

    def __iter__(self) -> Iterator[dict]:
        windows = self._windows()
        if self.shuffle:
            windows = buffer_shuffle(windows, self.buffer_size, random.Random(f"{self.seed}-{self.epoch}-{consumer()}"))
        for n, window in enumerate(windows):
            if self.epoch_length is not None and n >= self.epoch_length:
                return
            yield window

