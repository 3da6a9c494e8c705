import pytest
import torch

from compressor.tools import baselines
from compressor.tools.baselines import Candidate, best_within, hevc_roundtrip, image_candidates, image_roundtrip
from compressor.metrics import frame_psnr
from compressor.data.synthetic import driving_clip


@pytest.fixture(scope="module")
def clip():
    return driving_clip(seed=3, num_frames=10, image_size=(128, 256))  # uint8 (T, 3, 128, 256)


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_byte_search_never_exceeds_the_budget(clip, codec):
    frame = clip[0]
    cands = image_candidates(frame, codec, downscale=True)
    assert {c.size for c in cands} == set(baselines.SIZES)
    for budget in (64, 150, 224, 400, 1000, 3000):
        best, fits = best_within(cands, budget)
        data, recon = image_roundtrip(frame, codec, best.quality, best.size)
        assert len(data) == best.nbytes  # the search's byte count is the real file size
        if fits:
            assert best.nbytes <= budget
            # nothing that fits scores better
            assert best.psnr == max(c.psnr for c in cands if c.nbytes <= budget)
            assert frame_psnr(recon[None], frame[None]).item() == pytest.approx(best.psnr)
        else:
            assert best.nbytes == min(c.nbytes for c in cands) > budget  # reported at its smallest size


def test_full_size_search_only_uses_full_size(clip):
    cands = image_candidates(clip[0], "webp", downscale=False)
    assert {c.size for c in cands} == {(256, 128)}
    assert len(cands) == len(baselines.IMAGE_CODECS["webp"][2])


def test_best_within_on_a_table():
    cands = [Candidate(300, 25.0, 10, (256, 128)), Candidate(200, 22.0, 0, (256, 128)),
             Candidate(220, 23.0, 20, (64, 32)), Candidate(224, 22.5, 5, (32, 16))]
    assert best_within(cands, 224) == (cands[2], True)
    assert best_within(cands, 219) == (cands[1], True)
    assert best_within(cands, 100) == (cands[1], False)


@pytest.mark.slow
def test_hevc_round_trip_counts_every_frame_and_rate_follows_qp(clip):
    small, recon_small = hevc_roundtrip(clip, fps=10, qp=45)
    large, recon_large = hevc_roundtrip(clip, fps=10, qp=24)
    assert recon_small.shape == clip.shape and recon_small.dtype == torch.uint8
    assert len(small) == len(clip) and sum(small) < sum(large)
    assert frame_psnr(recon_large, clip).mean() > frame_psnr(recon_small, clip).mean()


@pytest.mark.slow
def test_best_video_point_fits_the_average_budget(clip):
    points = baselines.hevc_sweep(clip, fps=10, qps=(24, 36, 48), keep_frames=[0, 5])
    assert [p.kept.shape[0] for p in points] == [2, 2, 2]
    rates = sorted(p.bytes_per_frame for p in points)
    best, fits = baselines.best_video_point(points, rates[1])
    assert fits and best.bytes_per_frame <= rates[1]
    best, fits = baselines.best_video_point(points, rates[0] - 1)
    assert not fits and best.bytes_per_frame == rates[0]
