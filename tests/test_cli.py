"""One CLI vocabulary: every command is a console script, lives in compressor/tools/ or at the top level, and names
what it reads --input, what it writes --output, with --checkpoint, --batch-size, --device (default auto) and
--workers; no aliases."""

import argparse
import importlib
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib")
with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    SCRIPTS = tomllib.load(f)["project"]["scripts"]
# Old names and aliases of the vocabulary's options. (experiments run keeps --shards for the frame shards it trains
# on: its --input is the videos it is evaluated on.)
FORBIDDEN = {"--out", "--videos", "--output-dir", "--batch", "--latents", "--val-shards", "--shards"}
ALLOWED = {("compressor.tools.experiments", "run", "--shards")}


def test_every_command_is_a_console_script():
    modules = {target.split(":")[0] for target in SCRIPTS.values()}
    tools = os.path.join(REPO, "compressor", "tools")
    with_main = {f"compressor.tools.{name[:-3]}" for name in os.listdir(tools)
                 if name.endswith(".py") and "def main(" in open(os.path.join(tools, name)).read()}
    # compressor.worldmodel is a tool package of its own (its cli module): a consumer of the library, like tools/
    assert with_main | {"train", "encode", "compressor.worldmodel.cli"} == modules
    for package_dir in ("codec", "data", "entropy", "latents", "training"):  # no command lines anywhere else
        folder = os.path.join(REPO, "compressor", package_dir)
        for name in os.listdir(folder):
            if name.endswith(".py"):
                text = open(os.path.join(folder, name)).read()
                assert "ArgumentParser(" not in text and name != "__main__.py", f"compressor/{package_dir}/{name}"


class _Parsed(Exception):
    pass


def parsers(module_name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """The argparse parser(s) a command's ``main`` builds (subcommands included), caught at ``parse_args``."""
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise _Parsed

    module = importlib.import_module(module_name)
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        with pytest.raises(_Parsed):
            module.main(["--help"])
    finally:
        argparse.ArgumentParser.parse_args = original
    out = [("", caught[0])]
    for action in caught[0]._actions:
        if isinstance(action, argparse._SubParsersAction):
            out += list(action.choices.items())
    return out


@pytest.mark.parametrize("script", sorted(s for s, t in SCRIPTS.items() if not t.startswith("train:")))
def test_help_shows_the_shared_vocabulary(script, monkeypatch):
    monkeypatch.syspath_prepend(REPO)
    module_name = SCRIPTS[script].split(":")[0]
    for sub, parser in parsers(module_name):
        assert parser.format_help()
        for action in parser._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            assert len(longs) <= 1, f"{script} {sub}: aliases {longs}"
            for option in longs:
                assert option not in FORBIDDEN or (module_name, sub, option) in ALLOWED, f"{script} {sub}: {option}"
            if longs == ["--device"]:
                assert action.default == "auto", f"{script} {sub}: --device defaults to {action.default}"
            if longs == ["--batch-size"] or longs == ["--workers"]:
                assert action.type is int
    assert sys.modules[module_name]
