"""Writing a latent folder safely: one run at a time (``lock_output``), shards under temporary names renamed when
complete (``ShardWriter``), a full disk reported with the file and the space left (``DiskFullError``), and what no
manifest records removed before a resume (``remove_unrecorded``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator


# The write sequence of a shard, in order. ``encode_videos(step_hook=...)`` is called after each step, so tests can
# stop the job at any of them the way a kill would.
WRITE_STEPS = ("sample_written", "shard_closed", "shard_renamed", "manifest_written")


LOCK = ".encode.lock"


_SHARD_NAME = re.compile(r"^latents-(\d{6,})\.tar(\.tmp)?$")  # what ShardWriter writes; other files are left alone


class OutputLockedError(RuntimeError):
    """Another run is writing the output folder."""


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the file and the space left."""


@contextlib.contextmanager
def reporting_full_disk(path: str) -> Iterator[None]:
    """Turn ENOSPC from the writes inside into a ``DiskFullError`` naming ``path`` and the space left beside it."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC or isinstance(e, DiskFullError):
            raise
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        raise DiskFullError(f"no space left on the device writing {path} ({free:,} bytes free there); free some "
                            "space and run the same command again to resume") from e


def _holder_is_dead(holder: str) -> bool:
    """Whether the lock file's "host H, pid P" names a process of this host that no longer exists."""
    match = re.match(r"host (\S+), pid (\d+)", holder)
    if not match or match.group(1).rstrip(",") != socket.gethostname():
        return False
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lock_output(output: str, orphan_wait_s: float = 60.0):
    """Take the lock of the output folder for this run and return its open file: hold it until the run ends (the
    kernel drops it when the process ends, kill -9 included, so no lock is ever stale).

    Two runs writing one folder would both number their shards from 0 and lose each other's videos, so the second
    is refused with ``OutputLockedError`` naming the host and pid of the first. Ranks of one torchrun job share a
    folder by design: only rank 0 takes the lock (``encode.py``). A lock whose recorded process is dead is held by
    that run's forked workers on their way out: it is waited for, up to ``orphan_wait_s`` seconds.
    """
    f = open(os.path.join(output, LOCK), "a+")
    deadline = time.monotonic() + orphan_wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a run that is starting"
            # A killed run's DataLoader workers were forked with its lock and hold it until they notice their
            # parent is gone (a few seconds): wait for them rather than refuse a resume.
            if _holder_is_dead(holder) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            f.close()
            raise OutputLockedError(f"{output} is being written by another encode run ({holder}); wait for it to "
                                    "end, or encode into another --output") from None
    f.seek(0)
    f.truncate()
    f.write(f"host {socket.gethostname()}, pid {os.getpid()}, since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    f.flush()
    return f


def check_writable(output: str) -> None:
    """Create ``output`` if needed and write a file there: an unwritable output fails before any work, clearly."""
    try:
        os.makedirs(output, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"output directory {output} is not writable ({type(e).__name__}: {e})") from e


def shard_index(name: str) -> int | None:
    """The index of a shard name that ``ShardWriter`` writes (finished or ``.tmp``); None for any other name."""
    match = _SHARD_NAME.match(name)
    return int(match.group(1)) if match else None


class ShardWriter:
    """Writes samples to ``latents-%06d.tar`` under a temporary name; shards close on whole-video boundaries.

    ``taken``: shard names the manifests record, never reused even if their file was deleted (a reused name would
    give two manifest entries for one name)."""

    def __init__(self, output: str, rank: int, world_size: int, maxcount: int, taken: Iterable[str] = ()):
        self.output, self.rank, self.world_size, self.maxcount = output, rank, world_size, maxcount
        self.tar = None
        self.samples = 0
        self.index = self._next_index(taken)

    def _next_index(self, taken: Iterable[str]) -> int:
        names = [os.path.basename(p) for p in glob.glob(os.path.join(self.output, "latents-*.tar"))] + list(taken)
        used = [i for i in map(shard_index, names) if i is not None]
        k = (max(used) // self.world_size + 1) if used else 0
        return k * self.world_size + self.rank  # ranks never collide: rank r owns indices = r (mod world)

    @property
    def name(self) -> str:
        return f"latents-{self.index:06d}.tar"

    def write(self, sample: dict) -> None:
        tmp = os.path.join(self.output, self.name + ".tmp")
        with reporting_full_disk(tmp):
            if self.tar is None:
                import webdataset as wds  # here: importing compressor.latents (readers) loads no shard writer

                # A fixed mtime: the same videos and model give byte-identical shards, so a resumed job can be
                # checked against a clean one.
                self.tar = wds.TarWriter(tmp, mtime=0)
            self.tar.write(sample)
        self.samples += 1

    def full(self) -> bool:
        return self.samples >= self.maxcount

    def close(self, step: Callable[[str], None]) -> tuple[str, dict] | None:
        """Finish the current shard; returns its name and manifest entry (None if empty)."""
        if self.tar is None:
            return None
        tmp = os.path.join(self.output, self.name + ".tmp")
        with reporting_full_disk(tmp):
            self.tar.close()
        step("shard_closed")
        final = os.path.join(self.output, self.name)
        os.replace(tmp, final)
        step("shard_renamed")
        entry = {"sha256": sha256_file(final), "bytes": os.path.getsize(final), "samples": self.samples}
        name = self.name
        self.tar, self.samples = None, 0
        self.index += self.world_size
        return name, entry


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_unrecorded(output: str, rank: int, world_size: int, recorded: dict) -> None:
    """Delete this rank's shards that no manifest records: partial ones (``.tmp``) and finished ones that a kill
    between rename and manifest write left behind. Their videos are not marked done, so they are redone."""
    for path in glob.glob(os.path.join(output, "latents-*.tar*")):
        name = os.path.basename(path)
        index = shard_index(name)  # None: a file this pipeline never writes (latents-old.tar), left alone
        if index is not None and index % world_size == rank and (name.endswith(".tmp") or name not in recorded):
            os.remove(path)
