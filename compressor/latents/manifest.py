"""The manifests of a latent folder: ``manifest.json`` and, while a job runs or after it was killed, one
``manifest.rank-R.json`` per rank. They are the single truth of what the folder holds: each shard with its sha256,
size and sample count, each video with its status, frame count and shard, the model whose tokens they are and the
input root that videos are named relative to.

``read_manifest`` merges and checks them (readers and the encode pipeline); ``load_manifests`` also forgets shards
deleted by hand; ``is_done`` says whether a video needs encoding again; ``write_merged_manifest`` writes
``manifest.json`` at the end of a job.
"""

from __future__ import annotations

import glob
import os
import time

from compressor.latents.samples import DamagedShardError
from compressor.latents.writer import reporting_full_disk
from compressor.utils import load_json, open_checked, write_json

# A bound for open_checked: far above any real manifest, far below what would hang a reader or exhaust its memory.
MAX_MANIFEST_BYTES = 1 << 30
MANIFEST = "manifest.json"


def read_manifest(directory: str) -> dict | None:
    """``manifest.json`` merged with the per-rank manifests of a job still running or killed; None if none.

    They must agree: on the model, on the input root, and on every shard that two of them list (so a sha256
    changed in ``manifest.json`` is caught while a rank manifest still lists the shard). A video that two of them
    list (a failed video retried, say) takes the later entry, unless only the earlier one's shard exists.
    """
    paths = [os.path.join(directory, MANIFEST), *sorted(glob.glob(os.path.join(directory, "manifest.rank-*.json")))]
    merged, found, agreed = {"videos": {}, "shards": {}}, False, {"model_id": {}, "root": {}}

    def has_shard(entry: dict) -> bool:
        return bool(entry.get("shard")) and os.path.exists(os.path.join(directory, entry["shard"]))

    for path in filter(os.path.exists, paths):
        try:
            with open_checked(path, MAX_MANIFEST_BYTES) as f:  # never a FIFO or /dev/zero
                part = load_json(f.read())
            for name, entry in part["shards"].items():
                if merged["shards"].setdefault(name, entry) != entry:
                    raise DamagedShardError(f"{directory}: the manifests disagree about shard {name} "
                                            f"({os.path.basename(path)} and an earlier one); one was edited or "
                                            "damaged")
            for rel, entry in part["videos"].items():
                old = merged["videos"].get(rel)
                if old is None or old == entry or has_shard(entry) or not has_shard(old):
                    merged["videos"][rel] = entry
            for key, values in agreed.items():
                if part.get(key):
                    values[part[key]] = path
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DamagedShardError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from e
        found = True
    for key, values in agreed.items():
        if len(values) > 1:
            what = "models" if key == "model_id" else "input roots"
            raise DamagedShardError(f"{directory}: manifests of different {what}: "
                                    + ", ".join(f"{m} in {os.path.basename(p)}" for m, p in values.items()))
        if values:
            merged[key] = next(iter(values))
    return merged if found else None


def load_manifests(output: str) -> dict:
    """Merge ``manifest.json`` and every rank's partial manifest into {"videos": {...}, "shards": {...}}."""
    return forget_missing_shards(output, read_manifest(output) or {"videos": {}, "shards": {}})


def forget_missing_shards(output: str, manifest: dict) -> dict:
    """A shard listed but missing on disk (e.g. deleted by hand) makes its videos pending again, and is no longer
    listed (a later manifest.json would otherwise name a file that readers must then report missing)."""
    for name in [name for name in manifest["shards"] if not os.path.exists(os.path.join(output, name))]:
        del manifest["shards"][name]
    for rel, entry in list(manifest["videos"].items()):
        if entry.get("shard") and entry["shard"] not in manifest["shards"]:
            del manifest["videos"][rel]
    return manifest


def file_signature(path: str) -> dict:
    """Size and modification time of a video, recorded with it: a failed video whose file changed is retried."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_done(entry: dict | None, path: str) -> bool:
    """Whether a video's manifest entry means it needs no (new) encoding: it was encoded, or it failed and its
    file has not changed since."""
    if entry is None:
        return False
    if entry.get("status") != "failed":
        return True
    signature = file_signature(path)
    return bool(signature) and all(entry.get(k) == v for k, v in signature.items())


def write_merged_manifest(output: str, root_inputs: list[str]) -> dict:
    merged = load_manifests(output)
    merged["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    merged["inputs"] = root_inputs
    path = os.path.join(output, "manifest.json")
    with reporting_full_disk(path):
        write_json(path, merged)
    return merged
