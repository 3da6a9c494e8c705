"""The codec API's hardened inputs: token dtypes that decode accepts, and files that load refuses by name."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import compressor
from tests.conftest import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_decode_accepts_unsigned_token_dtypes():
    model = tiny_model()
    tokens = model.encode(torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8))
    expected = model.decode(tokens)
    for dtype in (torch.uint16, torch.uint32, torch.int32, torch.int16):  # uint16: what tokens.npy holds
        assert torch.equal(model.decode(tokens.to(dtype)), expected), dtype
    with pytest.raises(ValueError, match="must lie in"):
        model.decode(torch.full((1, 128), 65535, dtype=torch.uint16))


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 8, b"PK\x03\x04" + b"\x00" * 100, b"\x80\x02}q\x00."])
def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a compressor checkpoint") as e:
        compressor.load(path)
    assert "weights_only=False" not in str(e.value)  # never advise turning off the one safety that holds


@pytest.mark.parametrize("blob", [torch.zeros(3), [1, 2], {"format": "compressor/1"},
                                  {"format": "compressor/1", "config": 5, "state_dict": {}}])
def test_torch_files_of_other_shapes_are_refused_by_name(tmp_path, blob):
    torch.save(blob, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not a compressor checkpoint"):
        compressor.load(tmp_path / "model.pt")


def test_a_config_is_checked_against_the_weights_before_any_allocation(tmp_path):
    """A 2 KB file whose config asks for a 0.8 GB decoder: refused, with no more than a few MB allocated."""
    export = tiny_model().export_dict()
    export["config"]["decoder"]["init_args"].update(dim=2048, depth=4, heads=16)
    export["state_dict"] = {}
    torch.save(export, tmp_path / "model.pt")
    assert os.path.getsize(tmp_path / "model.pt") < 4096
    script = textwrap.dedent(f"""
        import resource, torch, compressor
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            compressor.load({str(tmp_path / "model.pt")!r})
        except ValueError as e:
            print("refused:", e)
        print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert "refused:" in r.stdout and "not a compressor checkpoint" in r.stdout, r.stdout
    assert float(r.stdout.split("grew_mb")[1]) < 100, r.stdout
