"""Finding latent shards: what a caller's directories, globs, brace patterns, ``pipe:`` commands and lists name,
and how those files stand against the manifests beside them.

A file name is data, never a command: ``pipe:`` is a command only in the caller's own string (``expand_urls``).
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from collections.abc import Sequence

from compressor.latents.manifest import read_manifest

from compressor.latents.samples import DamagedShardError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def expand_urls(shards: str | Sequence[str]) -> list[str]:
    """A directory, glob, brace pattern, ``pipe:`` command or list of those -> a list of URLs, sorted per item, each
    local file once (by its resolved path: ``["d", "d/"]`` or ``["d", "d/latents-000000.tar"]`` name it twice).

    A string that names a path, or a glob that matches some, is a path, whatever it starts with; only the rest of
    the caller's own strings may be ``pipe:`` commands. A path that looks like a URL comes back as ``./pipe:...``,
    so no file name that a glob or a folder listing finds ever runs as a command. Other URL schemes are refused
    here, before any work: ``pipe:curl -sL URL`` reads from a server. A glob that matches a folder is refused too:
    name the folder itself.
    """
    import braceexpand

    def path(p: str) -> str:  # a relative path that starts like a URL scheme, made unmistakable
        return os.path.join(".", p) if _SCHEME.match(p) else p

    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    urls: list[str] = []
    for item in map(str, items):
        for url in braceexpand.braceexpand(item):
            matches = sorted(glob.glob(url)) if any(c in url for c in "*?[") else []
            if os.path.isdir(url):
                urls += map(path, sorted(glob.glob(os.path.join(url, "*.tar")) + glob.glob(os.path.join(url, "*.npy"))))
            elif matches:
                if folders := [m for m in matches if os.path.isdir(m)]:
                    raise ValueError(f"{url!r} matches the folder {folders[0]}: a glob must match shard files "
                                     "(latents-*.tar, *.npy); to read a folder, name the folder")
                urls += map(path, matches)
            elif os.path.exists(url):
                urls.append(path(url))
            elif scheme := _SCHEME.match(url):
                if scheme.group(1) != "pipe":
                    raise ValueError(f"unsupported URL scheme {scheme.group(1)}: in {url!r}; latent shards are local "
                                     f"paths or pipe: commands (for example pipe:curl -sL {url})")
                urls.append(url)
            elif not any(c in url for c in "*?["):
                raise FileNotFoundError(f"no such latent shard: {url}")
    if not urls:
        raise FileNotFoundError(f"no latent shards (*.tar, commaVQ *.npy) found in {shards!r}")
    seen: set[str] = set()
    unique = []
    for url in urls:
        identity = url if _SCHEME.match(url) and not os.path.exists(url) else os.path.realpath(url)
        if identity not in seen:
            seen.add(identity)
            unique.append(url)
    return unique


def _is_local(url: str) -> bool:
    return url.endswith((".tar", ".npy")) and not (_SCHEME.match(url) and not os.path.exists(url))


def check_against_manifests(shards: str | Sequence[str],
                            urls: list[str]) -> tuple[dict, list[tuple[str, DamagedShardError]]]:
    """Each local shard URL's manifest entry, and what disagrees with the manifests, as (URL, error): shards they
    do not list (a killed job's unrecorded shard would duplicate its videos), and shards they list that are missing
    from their folder, whether the folder, a glob or a list was given. Exported ``.json`` files whose ``.npy`` is
    missing count as missing too. Folders without a manifest can only be checked that far: one warning says so."""
    manifests: dict[str, dict | None] = {}

    def manifest(directory: str) -> dict | None:
        if directory not in manifests:
            manifests[directory] = read_manifest(directory)
        return manifests[directory]

    expected, problems = {}, []
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    folders = {os.path.abspath(str(item)): str(item) for item in items if os.path.isdir(item)}
    for url in urls:
        if _is_local(url):
            folders.setdefault(os.path.dirname(os.path.abspath(url)), os.path.dirname(url) or ".")
    npy_folders = {os.path.dirname(os.path.abspath(url)) for url in urls if _is_local(url) and url.endswith(".npy")}
    unchecked = []
    for directory, shown in folders.items():
        m = manifest(directory)
        if m is None:
            unchecked.append(shown)
            listed: set[str] = set()
        else:
            listed = set(m["shards"])
            for name in sorted(listed):
                path = os.path.join(shown, name)
                if not os.path.exists(path):
                    problems.append((path, DamagedShardError(f"{path}: listed in the manifest of {shown} but missing")))
        for sidecar in sorted(glob.glob(os.path.join(directory, "*.json")) if directory in npy_folders else []):
            name = os.path.basename(sidecar)
            npy = name[:-5] + ".npy"
            if not name.startswith("manifest") and npy not in listed and not os.path.exists(sidecar[:-5] + ".npy"):
                path = os.path.join(shown, npy)
                problems.append((path, DamagedShardError(f"{path}: missing; its metadata {name} is there (a deleted "
                                                         "token file)")))
    if unchecked:
        warnings.warn(f"no manifest.json in {', '.join(unchecked[:3])}{' ...' if len(unchecked) > 3 else ''}: a "
                      "missing or extra shard there cannot be detected (encode.py and the commaVQ export write one)",
                      stacklevel=3)
    for url in urls:
        if _is_local(url):
            directory = os.path.dirname(os.path.abspath(url))
            if (m := manifest(directory)) is not None:
                if os.path.basename(url) in m["shards"]:
                    expected[url] = m["shards"][os.path.basename(url)]
                else:
                    problems.append((url, DamagedShardError(
                        f"{url}: not listed in the manifest of {directory} (a shard that a killed encode job did "
                        "not record, or a stray file)")))
    return expected, problems


def manifest_model_ids(urls: list[str]) -> dict[str, str]:
    """{folder: model id} for the folders of local shard URLs whose manifests name their model."""
    ids = {}
    for directory in {os.path.dirname(os.path.abspath(url)) for url in urls if _is_local(url)}:
        if (m := read_manifest(directory)) is not None and m.get("model_id"):
            ids[directory] = m["model_id"]
    return ids


def check_output_apart(urls: list[str], output: str) -> None:
    """``ValueError`` if ``output`` is the folder of an input: writing there would replace the inputs (and their
    ``manifest.json``) while they are read."""
    inputs = {os.path.realpath(os.path.dirname(url) or ".") for url in urls if _is_local(url)}
    if os.path.realpath(output) in inputs:
        raise ValueError(f"--output {output} is an input folder; write to another folder")
