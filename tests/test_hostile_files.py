"""Special files, sizes, nesting and arguments, generated here: a FIFO, a device or a file far larger than any real
one is refused by name before a byte is read, where the readers used to hang or grow memory without bound, and
deeply nested JSON or a nonsensical rate is a clear error, not a traceback or an endless loop.

Every read that used to hang runs in a forked process with a time and memory limit, so a regression fails the test
instead of hanging the suite or exhausting the machine.
"""

import json
import multiprocessing
import os
import resource

import numpy as np
import pytest
import webdataset as wds

from compressor.latents import DamagedShardError, LatentDataset, read_segments
from compressor.latents.manifest import read_manifest
from compressor.latents.samples import make_sample
from tests.test_hostile_names import write_shard


def outcome(fn, seconds: float = 15, cpu_seconds: int | None = None) -> str:
    """``fn()`` in a forked process with 1 GiB more address space than now (and at most ``cpu_seconds`` of CPU, a
    bound that holds however loaded the machine is): "ok", "hang", or the exception it raised, as "Type: message"."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def target():
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30),) * 2)
        if cpu_seconds is not None:  # past it, SIGXCPU ends the process
            used = resource.getrusage(resource.RUSAGE_SELF)
            limit = int(used.ru_utime + used.ru_stime) + cpu_seconds
            resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))
        try:
            fn()
            queue.put("ok")
        except BaseException as e:  # noqa: BLE001 (whatever it is, the test names it)
            queue.put(f"{type(e).__name__}: {e}")

    process = ctx.Process(target=target)
    process.start()
    process.join(seconds)
    if process.is_alive():
        process.kill()
        process.join()
        return "hang"
    return queue.get(timeout=5) if not queue.empty() else f"died with exit code {process.exitcode}"


def special(path, kind: str) -> None:
    """Make ``path`` a FIFO or a symlink to /dev/zero."""
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)


# ---- special files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("skip_damaged", [False, True])
def test_a_shard_that_is_a_special_file_is_refused_by_name(tmp_path, kind, skip_damaged):
    write_shard(tmp_path / "a.tar")
    special(tmp_path / "b.tar", kind)

    def read():
        with pytest.warns(UserWarning):
            windows = list(LatentDataset(str(tmp_path), seq_len=4, skip_damaged=skip_damaged))
        assert len(windows) == 1

    result = outcome(read)
    if skip_damaged:
        assert result == "ok"
    else:
        assert result.startswith("DamagedShardError") and "b.tar" in result and "not a regular file" in result


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("which", ["manifest.json", "seg.npy", "seg.json"])
def test_a_manifest_or_npy_that_is_a_special_file_is_refused_by_name(tmp_path, kind, which):
    if which != "seg.npy":
        np.save(tmp_path / "seg.npy", np.zeros((2, 8, 16), np.int16))
    special(tmp_path / which, kind)
    read = (lambda: read_manifest(str(tmp_path))) if which == "manifest.json" else (
        lambda: list(read_segments(str(tmp_path / "seg.npy"))))
    result = outcome(read)
    assert result.startswith("DamagedShardError") and which in result and "not a regular file" in result


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_video_or_split_manifest_that_is_a_special_file_is_refused_by_name(tmp_path, kind):
    from compressor.data.video import iter_frames, split_videos

    special(tmp_path / "clip.mp4", kind)
    assert "not a regular file" in outcome(lambda: list(iter_frames(str(tmp_path / "clip.mp4"))))
    special(tmp_path / "MANIFEST.tsv", kind)
    assert "not a regular file" in outcome(lambda: split_videos([str(tmp_path / "clip.mp4")]))


# ---- nesting -------------------------------------------------------------------------------------------------
DEEP = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_in_a_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_bytes(DEEP)
    with pytest.raises(DamagedShardError, match="manifest.json.*nested"):
        read_manifest(str(tmp_path))


def test_deeply_nested_json_in_a_sample_is_skipped_like_any_damaged_sample(tmp_path):
    tokens = np.zeros((4, 8), np.uint16)
    with wds.TarWriter(str(tmp_path / "a.tar"), mtime=0) as sink:
        sink.write({**make_sample(tokens, {"source": "a.mp4", "segment": 0}), "json": DEEP})
        sink.write(make_sample(tokens, {"source": "b.mp4", "segment": 0}))
    with pytest.warns(UserWarning):
        dataset = LatentDataset(str(tmp_path), seq_len=4, skip_damaged=True)
        assert [w["source"] for w in dataset] == ["b.mp4"]
    assert dataset.skipped_samples == 1


def test_deeply_nested_json_in_a_hub_config_is_a_clear_error(tmp_path):
    from compressor.codec.hub import folder_config

    (tmp_path / "config.json").write_bytes(DEEP)
    with pytest.raises(ValueError, match="config.json.*nested"):
        folder_config(tmp_path)


# ---- arguments -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--fps", "-1"], ["--fps", "nan"], ["--fps", "0"], ["--fps", "inf"],
                                  ["--segment-seconds", "inf"], ["--segment-seconds", "0"],
                                  ["--segment-seconds", "nan"], ["--batch-size", "0"], ["--maxcount", "0"]])
def test_encode_refuses_rates_and_counts_that_mean_nothing(args, capsys):
    from tests.test_hostile_latents import encode_script

    with pytest.raises(SystemExit) as e:
        encode_script()(["--checkpoint", "x.pt", "--input", "v", "--output", "o", *args])
    assert e.value.code == 2 and args[0] in capsys.readouterr().err


# ---- crafted streams -------------------------------------------------------------------------------------------
def crafted_adaptive(frames: int | None = None, version: int | None = None) -> bytes:
    """A real adaptive segment (a frame, then a repeat: one frame alone would be stored packed) whose header claims
    ``frames`` frames (its CRC recomputed): the rest decode from whatever is left of the payload, as crafted ones
    would."""
    from compressor.entropy.adaptive import VERSION, AdaptivePrior
    from compressor.entropy.stream import encode_segment
    from tests.stream_fuzz import moving_tokens, set_field

    prior = AdaptivePrior(15360, (8, 16), version=version or VERSION)
    data = encode_segment(moving_tokens(1, seed=1).expand(2, -1).clone(), prior)
    return data if frames is None else set_field(data, "frames", frames)


def bounded(fn) -> str:
    """``fn()`` in a forked process held to 10 CPU-seconds (the old bound let a 1 KB segment cost 87 s), the
    coder's compiled loops loaded first, in this process, so that their compilation is not counted."""
    from compressor.entropy.stream import decode_segment

    decode_segment(crafted_adaptive())
    return outcome(fn, seconds=900, cpu_seconds=10)


def payload_bound(data: bytes, version: int | None = None) -> int:
    """The most frames the decoder's up-front check lets this segment's header claim."""
    from compressor.entropy.adaptive import VERSION, AdaptivePrior
    from compressor.entropy.stream import HEADER_BYTES

    return AdaptivePrior(15360, (8, 16), version=version or VERSION).max_frames(len(data) - HEADER_BYTES)


def test_a_header_claiming_hundreds_of_frames_a_payload_byte_is_refused_before_decoding():
    """Repeat flags cost ~0.02 bits: the old bound let a 1 KB segment claim ~470,000 frames (87 s of CPU)."""
    from compressor.entropy.stream import HEADER_BYTES, StreamError, decode_segment

    data = crafted_adaptive()
    claimed = 100 * (len(data) - HEADER_BYTES)  # 100 frames a payload byte: ~1/5 of what the old bound allowed
    result = bounded(lambda: decode_segment(crafted_adaptive(claimed)))
    assert result.startswith(StreamError.__name__) and "holds at most" in result, result


@pytest.mark.parametrize("version", [None, 3, 1])  # the current version, and older ones a crafted header may name
def test_decoding_a_crafted_segment_stops_at_the_first_frame_its_payload_cannot_pay_for(version):
    """A header that claims as many frames as the up-front check allows: decoding ends early in StreamError, not
    after every claimed frame (the frames past the real one do not decode; the spend check that stops frames which
    do decode but cost more than the payload pays for is tested below)."""
    from compressor.entropy.stream import StreamError, decode_segment

    data = crafted_adaptive(version=version)
    result = bounded(lambda: decode_segment(crafted_adaptive(payload_bound(data, version), version)))
    assert result.startswith(StreamError.__name__) and "checksum" not in result, result


def test_decoding_stops_at_the_first_frame_that_costs_more_than_the_payload_pays_for():
    """The up-front check counts every claimed frame as a cheap repeat; a segment whose frames each change a token
    (here a legal version-3 one: unpadded, 200 frames in ~440 bytes) passes it and is stopped mid-way by the spend
    check, with the frame it stopped at, instead of decoding every frame."""
    import torch

    from compressor.entropy.adaptive import AdaptivePrior, work_budget
    from compressor.entropy.stream import StreamError, decode_segment, encode_segment, read_header
    from tests.stream_fuzz import moving_tokens

    prior = AdaptivePrior(15360, (8, 16), version=3)
    tokens = moving_tokens(1, seed=1).expand(200, -1).clone()
    tokens[1::2, 0] = (tokens[1::2, 0] + 1) % 15360  # one token flickers: every frame changes, ~2 bytes each
    data = encode_segment(tokens, prior)
    payload = read_header(data)["payload_bytes"]
    assert prior.max_frames(payload) >= 200  # the header's claim passes the up-front check
    assert prior.segment_work(tokens.numpy()) > work_budget(payload)  # the frames cost more than the payload pays
    with pytest.raises(StreamError, match=r"frame \d+ of 200 needs more decoding than"):
        decode_segment(data)
    assert torch.equal(decode_segment(encode_segment(tokens, AdaptivePrior(15360, (8, 16)))), tokens)  # v4 pads


def test_a_crafted_sample_in_a_shard_costs_no_more_than_its_bytes(tmp_path):
    """Through LatentDataset's read path: a ~300-byte coded sample claiming the most frames the old bound allowed."""
    from compressor.entropy.adaptive import MIN_FRAME_BITS
    from compressor.entropy.stream import HEADER_BYTES

    data = crafted_adaptive()
    claimed = int((64 + 8 * (len(data) - HEADER_BYTES)) / MIN_FRAME_BITS)
    with wds.TarWriter(str(tmp_path / "latents-000000.tar"), mtime=0) as sink:
        sink.write({"__key__": "a__0000", "json": json.dumps({"source": "a.mp4", "segment": 0}).encode(),
                    "tokens.ctok": crafted_adaptive(claimed)})
    result = bounded(lambda: list(LatentDataset(str(tmp_path), seq_len=2)))
    assert "DamagedSampleError" in result and "holds at most" in result, result


def test_adaptive_prior_arguments_whose_counts_would_overflow_are_refused_up_front():
    from compressor.entropy.adaptive import MAX_TOKENS, AdaptivePrior

    with pytest.raises(ValueError, match="at most"):
        AdaptivePrior(65536, (255, 255))  # 65,025 positions: one frame wraps a uint16 count
    with pytest.raises(ValueError, match="at most"):
        AdaptivePrior(2, (129, 255))
    assert AdaptivePrior(65536, (128, 255)).num_tokens <= MAX_TOKENS  # 32,640 positions still code


@pytest.mark.parametrize("frames", ["static", "one token flickers"])
def test_legal_segments_that_cost_little_pay_for_their_decoding_and_round_trip(frames):
    """The version-4 encoder pads a payload that would pay for less decoding than it needs (near-static scenes), so
    the decoder's budget never refuses a segment an encoder wrote."""
    import torch

    from compressor.entropy.adaptive import WORK_FREE, WORK_PER_BYTE, AdaptivePrior
    from compressor.entropy.stream import decode_segment, encode_segment, read_header

    prior = AdaptivePrior(64, (2, 4))
    tokens = torch.arange(8)[None].repeat(600 if frames == "static" else 200, 1)
    if frames != "static":
        tokens[1::2, 0] = 9
    data = encode_segment(tokens, prior)
    head = read_header(data)
    assert not head["stored"] and prior.segment_work(tokens.numpy()) > WORK_FREE  # past what no payload pays for
    assert prior.segment_work(tokens.numpy()) <= WORK_PER_BYTE * head["payload_bytes"] + WORK_FREE
    assert torch.equal(decode_segment(data), tokens)


def fitted_prior(kind: str):
    """A factorised prior (fitted on moving tokens) or a small untrained temporal one, on the real grid."""
    from compressor.entropy.coding import digit_radices
    from compressor.entropy.priors import FactorisedPrior, TemporalPrior
    from tests.stream_fuzz import moving_tokens

    if kind == "factorised":
        return FactorisedPrior(15360, digit_radices(15360), (8, 16)).fit(moving_tokens(20, seed=2))
    return TemporalPrior(15360, digit_radices(15360), (8, 16), dim=8, depth=1).eval()


@pytest.mark.parametrize("kind", ["factorised", "temporal"])
def test_a_fitted_prior_segment_claiming_more_frames_than_its_payload_pays_for_is_refused_before_decoding(kind):
    """Near-certain symbols cost ~2e-5 bits under 16-bit rANS, so the bound from symbol costs alone let a header
    claim ~100 factorised or temporal frames a payload byte (a temporal frame is a network pass per channel): the
    work budget refuses 20 a byte up front, within a CPU-seconds limit."""
    from compressor.entropy.stream import (CODER_COMPRESSAI_RANS16, HEADER_BYTES, StreamError, decode_segment,
                                           encode_segment)
    from tests.stream_fuzz import moving_tokens, seal, set_field

    prior = fitted_prior(kind)
    tokens = moving_tokens(2, seed=1)
    data = encode_segment(tokens, prior)
    decode_segment(data, prior)  # load what decoding needs before the limit counts
    # The frames' own rANS payload (a prior that fits them poorly gets them stored packed; a crafter says rANS).
    payload = prior.encode_payload(tokens)
    crafted = set_field(set_field(data, "coder", CODER_COMPRESSAI_RANS16), "length", len(payload))
    crafted = set_field(seal(crafted[:HEADER_BYTES], payload), "frames", 20 * len(payload))
    assert len(crafted) == HEADER_BYTES + len(payload)
    result = outcome(lambda: decode_segment(crafted, prior), seconds=900, cpu_seconds=10)
    assert result.startswith(StreamError.__name__) and "holds at most" in result, result


def test_a_near_static_fitted_prior_segment_is_padded_to_pay_for_its_decoding_and_round_trips():
    """A factorised prior fitted on a static scene codes its frames in a few bits: the encoder pads the payload (with
    words never read) to what the decoder's budget asks, so no segment an encoder writes is refused."""
    import torch

    from compressor.entropy.coding import digit_radices
    from compressor.entropy.priors import FactorisedPrior
    from compressor.entropy.stream import FREE_WORK, decode_segment, encode_segment, read_header
    from tests.stream_fuzz import moving_tokens

    tokens = moving_tokens(1, seed=3).expand(600, -1).clone()
    prior = FactorisedPrior(15360, digit_radices(15360), (8, 16)).fit(tokens)
    head = read_header(data := encode_segment(tokens, prior))
    work = len(tokens) * prior.work_per_frame()
    assert not head["stored"] and len(prior.encode_payload(tokens)) * prior.work_per_byte + FREE_WORK < work  # padded
    assert work <= head["payload_bytes"] * prior.work_per_byte + FREE_WORK
    assert torch.equal(decode_segment(data, prior), tokens)


# ---- grids -----------------------------------------------------------------------------------------------------
def test_a_video_codec_whose_conditional_part_has_another_grid_is_described_and_refused_for_entropy_coding(tmp_path):
    """Conditional frames on 8-px cells beside 16-px intra frames: their samples' P layout is the conditional grid,
    and entropy coding (one prior on one grid) is refused before any video is read, not mid-run."""
    from compressor.codec.quantizers import FSQ
    from compressor.codec.encoders import ViTEncoder
    from compressor.codec.decoders import ConditionalViTDecoder
    from compressor.codec.video import ConditionalCodec, VideoCodec
    from compressor.entropy.adaptive import AdaptivePrior
    from compressor.latents.pipeline import encode_videos
    from tests.conftest import tiny_model

    intra = tiny_model()
    inter = ConditionalCodec(ViTEncoder(patch_size=8, dim=32, depth=1, heads=2, in_channels=6), FSQ([8, 5, 5, 5]),
                             ConditionalViTDecoder(patch_size=8, dim=32, depth=1, heads=2),
                             image_size=tuple(intra.image_size), max_bytes_per_frame=1024)
    codec = VideoCodec(intra, inter, 4).eval()
    assert inter.grid != tuple(intra.grid)
    formats = codec.frame_formats()
    assert formats["P"]["token_layout"] == "{}x{} row-major".format(*inter.grid)
    assert formats["I"]["token_layout"] == "{}x{} row-major".format(*intra.grid)
    prior = AdaptivePrior(codec.codebook_size, codec.grid)
    with pytest.raises(ValueError, match="another grid"):
        encode_videos(codec, [str(tmp_path / "no-videos-needed")], str(tmp_path / "out"), prior=prior)
    assert not (tmp_path / "out").exists()
