"""The import rules of the package, checked as they hold at run time: each layer is imported in a fresh interpreter
and ``sys.modules`` says what it loaded. Plus the module graph of ``compressor/`` (every import, deferred ones
included) has no cycles, between modules or between sub-packages."""

import ast
import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "compressor")
LIGHTNING = ("pytorch_lightning", "lightning_fabric", "lightning")
# Our torch.nn model code: the codec's networks, the priors, training.
MODEL_CODE = ("compressor.codec.layers", "compressor.codec.encoders", "compressor.codec.decoders",
              "compressor.codec.quantizers", "compressor.codec.autoencoder", "compressor.entropy.priors",
              "compressor.training")


def loaded(statement: str) -> set[str]:
    """``sys.modules`` after ``statement`` in a fresh interpreter started in the repository."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.splitlines()[-1]))


def offending(modules: set[str], forbidden) -> list[str]:
    """The loaded modules that are, or lie inside, a forbidden one."""
    return sorted(m for m in modules for f in forbidden if m == f or m.startswith(f + "."))


RULES = {
    # What a world-model trainer imports to read tokens: no model, no Lightning, no Hub client, no video decoder, no
    # shard writer (webdataset).
    "import compressor.latents.dataset": (*MODEL_CODE, *LIGHTNING, "huggingface_hub", "av", "compressor.data",
                                          "webdataset"),
    "import compressor.latents": (*MODEL_CODE, *LIGHTNING, "huggingface_hub", "av", "compressor.data", "webdataset"),
    # What encode.py runs: the codec, but not the training stack.
    "import compressor.latents.pipeline": (*LIGHTNING, "compressor.training", "compressor.data.datamodule"),
    "import encode": (*LIGHTNING, "compressor.training", "compressor.data.datamodule", "compressor.tools"),
    "import compressor.codec.autoencoder, compressor.codec.hub, compressor.codec.packing":
        (*LIGHTNING, "compressor.data", "compressor.latents", "compressor.entropy", "compressor.training"),
    "import compressor.entropy, compressor.entropy.fit": (*LIGHTNING, "compressor.latents",
                                                          "compressor.codec.autoencoder", "compressor.training"),
}


@pytest.mark.parametrize("statement", RULES)
def test_layer_loads_nothing_above_it(statement):
    assert offending(loaded(statement), RULES[statement]) == []


def test_storage_format_is_a_leaf_over_numpy_and_torch():
    before = loaded("import numpy, torch")
    after = loaded("import numpy, torch\nimport compressor.codec.packing")
    assert after - before == {"compressor", "compressor.codec", "compressor.codec.packing"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _closure(dists: set[str]) -> set[str]:
    """``dists`` and everything they require, as installed (markers of optional extras skipped)."""
    seen, todo = set(), list(dists)
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        todo += _names([r for r in requires if "extra ==" not in r])
    return seen


def _import_time_imports(path: str) -> set[str]:
    """Top-level package names that a file imports when it is imported (not inside functions)."""
    with open(path) as f:
        body = list(ast.parse(f.read()).body)
    names = set()
    while body:
        node = body.pop()
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))
    return names


def test_latents_and_encoding_import_only_core_dependencies():
    """Nothing is installed: no module of ours that a reader of latents or encode.py loads imports, when it is
    imported, a distribution that only the extras bring, so a core install (``pip install compressor``) runs both.
    (What third-party packages import on their own when it happens to be installed, such as pandas loading pyarrow
    or torch_geometric loading zstandard, is theirs to guard.)"""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    core = _closure(_names(project["dependencies"]))  # with what the core packages themselves require (pyyaml)
    extras = set().union(*map(_names, project["optional-dependencies"].values())) - core - {"compressor"}
    modules_of: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    extra_modules = {m for dist in extras for m in modules_of.get(dist, ())}
    assert {"pytorch_lightning", "zstandard", "wandb"} <= extra_modules  # the mapping works
    files = {**_modules(), "encode": os.path.join(REPO, "encode.py")}
    for statement in ("import compressor.latents", "import encode"):
        ours = sorted(m for m in loaded(statement) if m in files)
        assert "compressor.latents.dataset" in ours
        bad = {m: sorted(_import_time_imports(files[m]) & extra_modules) for m in ours}
        assert {m: b for m, b in bad.items() if b} == {}, statement


# ---- the module graph -------------------------------------------------------------------------------------------
def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package (a package by its __init__)."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), REPO)[:-3].split(os.sep)
                found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(root, name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        is_package = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join(parent + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    graph = import_graph()
    assert "compressor.codec.packing" in graph["compressor.latents.samples"]  # the parser sees imports
    assert cycles(graph) == []


def test_subpackages_form_layers():
    """codec / data / entropy / latents / training / tools (and the top-level modules): no two import each other."""
    def layer(module: str) -> str:
        return ".".join(module.split(".")[:2])

    layers: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        layers.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    assert cycles(layers) == []
