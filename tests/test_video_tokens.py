"""Video tokens (compressor.codec.video): exact clip round trips, groups that start anywhere, clips shorter than a
group, clips from frame shards that never cross videos, and the per-frame default left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import compressor
from compressor.codec.quantizers import FSQ
from compressor.codec.remember import RememberingDecoder, load_remembering
from compressor.codec.decoders import ConditionalViTDecoder, ConditionalViTOverlapDecoder, warp
from compressor.codec.encoders import ViTEncoder
from compressor.codec.video import ConditionalCodec, load_video
from compressor.data.clips import FrameClips, read_videos
from compressor.data.synthetic import driving_clip
from compressor.training.cli import is_video_config
from tests.conftest import conditional_codec, tiny_model, video_codec
from tests.test_distributed import write_frame_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The video configs' parts at tiny sizes, as command-line overrides.
SMALL_PARTS = [f"--model.init_args.{part}.init_args.{k}={v}" for part in ("encoder", "decoder")
               for k, v in (("dim", 32), ("depth", 1), ("heads", 2))]


@pytest.mark.parametrize("merge,tokens", [(1, 128), (2, 64), (4, 32)])
def test_clip_round_trip_is_exact(merge, tokens):
    codec = video_codec(merge)
    frames = driving_clip(seed=1, num_frames=10)
    encoded, recon = codec.encode_clip(frames)
    assert [len(t) for t in encoded] == [128 if t % 4 == 0 else tokens for t in range(10)]
    sizes = [codec.intra.codebook_size if t % 4 == 0 else codec.inter.codebook_size for t in range(10)]
    assert all(t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < n for t, n in zip(encoded, sizes))
    assert torch.equal(codec.decode_clip(encoded), recon)
    # Through the stored format: uint16 tokens, a saved and reloaded codec.
    stored = [t.to(torch.int32).numpy().astype("uint16") for t in encoded]
    assert torch.equal(codec.decode_clip([torch.from_numpy(t.astype("int64")) for t in stored]), recon)


def test_saved_codec_decodes_the_same(tmp_path):
    codec = video_codec(2)
    frames = driving_clip(seed=2, num_frames=6)
    encoded, recon = codec.encode_clip(frames)
    codec.save(tmp_path / "video.pt")
    again = load_video(tmp_path / "video.pt")
    assert again.gop == 4 and again.inter.num_tokens == 64
    assert torch.equal(again.decode_clip(encoded), recon)


def test_conditional_frames_use_the_reference():
    codec = video_codec()
    frames = driving_clip(seed=3, num_frames=5)
    encoded, _ = codec.encode_clip(frames)
    # The same conditional tokens decode differently against another reference: the decoder reads it.
    ref = codec.intra.reconstruct(codec.intra.encode(frames[:1]))
    assert not torch.equal(codec.inter.decode(encoded[1][None], ref), codec.inter.decode(encoded[1][None], -ref))



@pytest.mark.parametrize("design", ["vit", "vit-overlap"])
def test_a_conditional_codec_started_from_the_intra_model_codes_as_it_does(design):
    intra = tiny_model(design)
    inter = conditional_codec(decoder=design, quantizer=FSQ([8, 8, 8, 6, 5]), dec_dim=48).eval()
    inter.init_from(intra)
    torch.nn.init.constant_(inter.decoder.blend.bias, -30.0)  # no reference at all: exactly the intra path
    frames = driving_clip(seed=8, num_frames=4)
    ref = torch.rand(4, 3, 128, 256) * 2 - 1  # whatever the reference, its paths start at zero
    tokens = inter.encode(frames, ref)
    assert (tokens == intra.encode(frames)).float().mean() > 0.99  # float sums in another order may flip a few
    same = intra.encode(frames)
    assert torch.allclose(inter.decode(same, ref), intra.reconstruct(same), atol=1e-4)


def test_video_training_starts_from_an_intra_model_of_the_same_parts_only(tmp_path):
    """The recipe's intra model paints overlapping tiles: a VideoModule whose conditional decoder is the overlap
    head's starts from its weights; one with another pixel head, or another encoder width, is refused with the
    reason."""
    from compressor.training.video import VideoModule

    intra = tiny_model("vit-overlap")
    intra.save(tmp_path / "intra.pt")

    def module(decoder=ConditionalViTOverlapDecoder, enc_dim=32):
        return VideoModule(str(tmp_path / "intra.pt"), ViTEncoder(dim=enc_dim, depth=1, heads=2, in_channels=6),
                           FSQ([8, 8, 8, 6, 5]), decoder(dim=48, depth=1, heads=2))

    codec = module().codec
    assert torch.equal(codec.decoder.head.weight, intra.decoder.head.weight)
    assert torch.equal(codec.encoder.transformer.blocks[0].attn.qkv.weight,
                       intra.encoder.transformer.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="starts from a ViTDecoder of the same arguments, not a ViTOverlapDecoder"):
        module(ConditionalViTDecoder)
    with pytest.raises(ValueError, match="init_from_intra needs.*same class and arguments"):
        module(enc_dim=64)


def test_warp_moves_by_whole_and_half_pixels_and_repeats_the_border():
    image = torch.arange(2 * 3 * 8 * 16, dtype=torch.float32).reshape(2, 3, 8, 16)
    flow = torch.zeros(2, 2, 2, 4)
    assert torch.equal(warp(image, flow), image)
    flow[:, 0] = 3  # 3 px right: output x reads input x + 3
    assert torch.allclose(warp(image, flow)[..., :13], image[..., 3:])
    assert torch.allclose(warp(image, flow)[..., 13:], image[..., 15:].expand(-1, -1, -1, 3))  # the border repeats
    flow[:, 0], flow[:, 1] = 0, -0.5  # half a pixel up: the mean of a row and the one above it
    assert torch.allclose(warp(image, flow)[:, :, 1:], (image[:, :, 1:] + image[:, :, :-1]) / 2)


def _motion_pair() -> tuple[ConditionalCodec, ConditionalCodec]:
    torch.manual_seed(0)
    moving = conditional_codec(merge=2, motion=True)
    for layer in (moving.decoder.head, moving.decoder.blend, moving.decoder.ref_embed):
        torch.nn.init.normal_(layer.weight, std=0.02)
    still = conditional_codec(merge=2)
    still.load_state_dict({k: v for k, v in moving.state_dict().items() if not k.startswith("decoder.flow.")})
    return moving.eval(), still.eval()


def test_motion_starts_as_no_motion_then_moves_the_reference_by_the_tokens_shift(tmp_path):
    moving, still = _motion_pair()
    frames = driving_clip(seed=9, num_frames=3)
    ref = frames.float() / 127.5 - 1
    tokens = moving.encode(frames, ref)
    assert torch.equal(moving.decode(tokens, ref), still.decode(tokens, ref))  # a fresh flow head: nothing moves
    with torch.no_grad():
        moving.decoder.flow.bias.copy_(torch.tensor([1.0, 0.0]))  # every cell: one cell (16 px) to the right
        moving.decoder.blend.weight.zero_()
        moving.decoder.blend.bias.fill_(30.0)  # keep only the (moved) reference
    out = moving.decode(tokens, ref)
    assert torch.allclose(out[..., :-16], ref[..., 16:], atol=1e-5)
    assert torch.allclose(out[..., -16:], ref[..., -1:].expand(-1, -1, -1, 16), atol=1e-5)
    again = ConditionalCodec.from_export(moving.export_dict())  # the mode travels with the weights
    assert again.decoder.motion and torch.equal(again.decode(tokens, ref), out)
    hostile = moving.export_dict()
    hostile["decoder"]["init_args"]["motion"] = "yes"
    with pytest.raises(ValueError, match="motion is 'yes', not true or false"):
        ConditionalCodec.from_export(hostile)


def test_the_flow_head_learns_from_the_reconstruction_loss():
    moving, _ = _motion_pair()
    moving.train()
    frames = driving_clip(seed=10, num_frames=2).float() / 127.5 - 1
    out = moving(frames[1:], frames[:1])
    ((out["recon"] - frames[1:]) ** 2).mean().backward()
    assert moving.decoder.flow.weight.grad.abs().sum() > 0 and moving.decoder.flow.bias.grad.abs().sum() > 0


def test_a_group_started_mid_clip_decodes_alone():
    codec = video_codec(gop=4)
    frames = driving_clip(seed=4, num_frames=12)
    _, whole = codec.encode_clip(frames)
    encoded, recon = codec.encode_clip(frames[4:])  # starts at the second group's intra frame
    assert torch.equal(codec.decode_clip(encoded), recon)
    assert torch.equal(recon, whole[4:])  # groups never reach back past their intra frame
    encoded, recon = codec.encode_clip(frames[5:])  # starts mid-group: frame 5 becomes an intra frame
    assert len(encoded[0]) == 128 and torch.equal(codec.decode_clip(encoded), recon)


def test_clip_shorter_than_a_group_and_gop_one_is_per_frame():
    codec = video_codec(gop=8)
    frames = driving_clip(seed=5, num_frames=3)
    encoded, recon = codec.encode_clip(frames)
    assert [len(t) for t in encoded] == [128, 128, 128] and torch.equal(codec.decode_clip(encoded), recon)
    codec.gop = 1  # every frame intra: exactly the per-frame tokens and frames
    encoded, recon = codec.encode_clip(frames)
    assert torch.equal(torch.stack(encoded), codec.intra.encode(frames))
    assert torch.equal(recon, codec.intra.decode(codec.intra.encode(frames)))


def test_remembering_decoder_reads_earlier_tokens_and_starts_as_the_per_frame_decoder(tmp_path):
    intra = tiny_model()
    frames = driving_clip(seed=7, num_frames=6)
    tokens = intra.encode(frames)
    decoder = RememberingDecoder(intra, history=2).eval()
    assert torch.equal(decoder.decode_clip(tokens), intra.decode(tokens))  # untrained: exactly the per-frame decode
    torch.nn.init.normal_(decoder.past[0].weight, std=0.5)
    torch.nn.init.normal_(decoder.missing, std=0.5)
    memory = decoder.decode_clip(tokens)
    assert not torch.equal(memory[1:], intra.decode(tokens)[1:])  # frame t reads frame t-1's tokens
    # Frame t depends on frames t-1 and t-2 only where they exist: the first frame decodes alone, and a clip
    # that starts later decodes its first frame as if nothing came before.
    assert torch.equal(decoder.decode_clip(tokens[3:])[0], decoder.decode_clip(tokens[3:4])[0])
    assert torch.equal(decoder.decode_clip(tokens[2:])[2:], memory[4:])
    decoder.save(tmp_path / "remembering.pt")
    intra2, again = load_remembering(tmp_path / "remembering.pt")
    assert torch.equal(intra2.encode(frames), tokens) and torch.equal(again.decode_clip(tokens), memory)


def test_clips_are_consecutive_frames_of_one_video(tmp_path):
    write_frame_shards(tmp_path, [5, 3, 2], size=(8, 8))  # frame k carries k in its first two pixels
    videos = read_videos(sorted(str(p) for p in tmp_path.glob("*.tar")))
    clips = FrameClips(videos, clip_len=3)
    ids = [[int(f[0, 0, 0]) + 256 * int(f[0, 0, 1]) for f in clip] for clip in clips]
    assert ids == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [5, 6, 7]]  # the 2-frame video is too short for a clip
    assert len(FrameClips(videos, clip_len=2, starts_every=2)) == 2 + 1 + 1


def test_per_frame_training_stays_the_default():
    assert not is_video_config(["fit", "--config", os.path.join(REPO, "configs", "cpu-best-224B.yaml")])
    assert not is_video_config([])
    assert is_video_config(["fit", "--config", os.path.join(REPO, "configs", "video-224B.yaml")])


@pytest.mark.slow
def test_train_py_trains_a_video_model(tmp_path):
    """train.py fit with configs/video-224B.yaml: 2 steps on generated shards, then video.pt codes a clip."""
    write_frame_shards(tmp_path / "shards", [6, 6])
    write_frame_shards(tmp_path / "shards", [6], split="val", start=100)
    intra = tmp_path / "intra.pt"
    tiny_model().save(intra)
    cmd = [sys.executable, "train.py", "fit", "--config", "configs/video-224B.yaml", "--data.shards",
           str(tmp_path / "shards"), "--model.init_args.intra", str(intra), "--trainer.max_steps", "2",
           "--trainer.default_root_dir", str(tmp_path / "run"), *SMALL_PARTS, "--model.init_args.init_from_intra", "false",
           "--data.batch_size", "2", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
           "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=REPO, env=env, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # The config's auto_precision measured both precisions on this CPU and trained in the faster one.
    line = next(l for l in run.stdout.splitlines() if l.startswith("auto_precision:"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert line.split()[1] == saved["trainer"]["precision"] in ("bf16-mixed", "32-true")
    codec = load_video(tmp_path / "run" / "video.pt")
    encoded, recon = codec.encode_clip(driving_clip(seed=6, num_frames=4))
    assert torch.equal(codec.decode_clip(encoded), recon)
    # the same codec as a Hub folder beside it, with the training in its card
    hub = tmp_path / "run" / "hub"
    assert torch.equal(compressor.load(hub).decode_clip(encoded), recon)
    card = (hub / "README.md").read_text()
    assert "Mode: video" in card and "Steps: 2, clips seen: 4" in card and f"`{intra}`, frozen" in card


def test_evaluate_video_reports_every_frame_of_the_val_clips_by_group_position(tmp_path):
    """python -m compressor.tools.evaluate_video on real files: the val clip only, its PSNR as the codec codes it,
    the bytes its groups cost, PSNR by position in the group; a group of 1 is the intra model alone."""
    import json

    from compressor.data.video import read_frames
    from compressor.metrics import frame_psnr
    from compressor.tools import evaluate_video
    from tests.conftest import write_video

    codec = video_codec(2)  # groups of 4: an intra frame, then 3 conditional frames of 64 tokens
    codec.save(tmp_path / "video.pt")
    for name, seed in (("val.mp4", 4), ("train.mp4", 5)):
        write_video(str(tmp_path / name), driving_clip(seed=seed, num_frames=10, image_size=(128, 256)))
    (tmp_path / "MANIFEST.tsv").write_text("file\tsplit\nval.mp4\tval\ntrain.mp4\ttrain\n")
    out = tmp_path / "report"
    assert evaluate_video.main(["--checkpoint", str(tmp_path / "video.pt"), "--input", str(tmp_path),
                                "--gop", "1", "4", "--output", str(out)]) == 0
    assert torch.is_grad_enabled()  # the tool's no_grad ends with it: later training in the process still learns
    report = json.loads((out / "report.json").read_text())
    assert list(report["gops"]["4"]["clips"]) == ["val.mp4"]  # --split val by default
    frames = read_frames(str(tmp_path / "val.mp4"), codec.intra.image_size)
    codec.gop = 4
    _, recon = codec.encode_clip(frames)
    four, one = report["gops"]["4"], report["gops"]["1"]
    assert four["clips"]["val.mp4"]["psnr"] == pytest.approx(frame_psnr(recon, frames).mean().item(), abs=1e-4)
    assert four["frames"] == 10 and len(four["psnr_by_position"]) == 4
    intra, inter = codec.intra.bytes_per_frame, codec.inter.bytes_per_frame
    assert four["bytes_per_frame"] == pytest.approx((3 * intra + 7 * inter) / 10)  # intra at frames 0, 4, 8
    assert one["bytes_per_frame"] == intra and one["psnr_clip_mean"] == pytest.approx(one["intra_only_psnr_clip_mean"])
    assert four["intra_only_psnr_clip_mean"] == pytest.approx(one["intra_only_psnr_clip_mean"])


def to_legacy(inter: dict) -> dict:
    """A ``ConditionalCodec.export_dict()`` (a 6-channel ``ViTEncoder``, a conditional ViT decoder) as the codec wrote it
    before it was composed of parts (until 2026-12-06): its arguments, and its weights by their old names and layout.
    The inverse of ``compressor.codec.video_legacy``; checked once against files the old code wrote, which decoded
    their tokens to the same frames bit for bit."""
    enc, dec = inter["encoder"]["init_args"], inter["decoder"]["init_args"]
    args = {"image_size": inter["image_size"], "patch_size": enc["patch_size"], "merge": inter["merge"],
            "enc_dim": enc["dim"], "enc_depth": enc["depth"], "enc_heads": enc["heads"], "dec_dim": dec["dim"],
            "dec_depth": dec["depth"], "dec_heads": dec["heads"], "motion": dec["motion"],
            "overlap": inter["decoder"]["class_path"].endswith("OverlapDecoder")}
    new_to_old = [("encoder.embed.", "enc_embed."), ("encoder.transformer.", "encoder."),
                  ("decoder.ref_embed.", "ref_embed."), ("decoder.transformer.", "decoder."),
                  ("decoder.head.", "head."), ("decoder.blend.", "blend."), ("decoder.flow.", "flow.")]
    p2, state = enc["patch_size"] ** 2, {}
    for name, w in inter["state_dict"].items():
        old = next((o + name[len(n):] for n, o in new_to_old if name.startswith(n)), name)
        if old == "enc_embed.weight":  # (D, (p q [frame c, ref c])) -> (D, [frame (p q c), ref (p q c)])
            w = w.reshape(len(w), p2, 2, 3).transpose(1, 2).reshape(len(w), 6 * p2)
        state[old] = w
    return {"init_args": args, "quantizer": inter["quantizer"], "state_dict": state}


@pytest.mark.parametrize("merge,motion", [(2, False), (1, True)])
def test_video_codecs_saved_before_the_parts_were_chosen_in_yaml_still_load_and_decode_the_same(tmp_path, merge,
                                                                                                  motion):
    import safetensors.torch

    codec = video_codec(merge)
    if motion:  # the overlapping-tile head with motion, a flow that moves something
        torch.manual_seed(3)
        codec.inter = conditional_codec(merge, "vit-overlap", motion=True).eval()
        with torch.no_grad():
            for p in codec.inter.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    frames = driving_clip(seed=4, num_frames=6)
    tokens, recon = codec.encode_clip(frames)
    old = {**codec.export_dict(), "inter": to_legacy(codec.inter.export_dict())}
    torch.save(old, tmp_path / "video.pt")
    folder = tmp_path / "hub"  # the old folder: config.json's inter holds the old arguments, the weights old names
    codec.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["inter"] = {k: v for k, v in old["inter"].items() if k != "state_dict"}
    (folder / "config.json").write_text(json.dumps(config))
    state = {f"intra.{k}": v for k, v in old["intra"]["state_dict"].items()}
    state.update({f"inter.{k}": v.contiguous() for k, v in old["inter"]["state_dict"].items()})
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    for path in (tmp_path / "video.pt", folder):
        loaded = compressor.load(path)
        assert type(loaded.inter.decoder) is type(codec.inter.decoder) and loaded.inter.decoder.motion == motion
        assert torch.equal(loaded.decode_clip(tokens), recon)  # stored tokens decode to the same frames
        again, _ = loaded.encode_clip(frames)  # and frames encode to the same tokens (float sums in another order)
        assert (torch.cat(again) == torch.cat(tokens)).float().mean() > 0.99
        assert loaded.inter.export_dict()["state_dict"].keys() == codec.inter.state_dict().keys()


def test_a_training_checkpoint_saved_before_the_parts_were_chosen_in_yaml_resumes(tmp_path):
    from compressor.training.video import VideoModule

    tiny_model().save(tmp_path / "intra.pt")
    module = VideoModule(str(tmp_path / "intra.pt"), ViTEncoder(dim=32, depth=1, heads=2, in_channels=6),
                         FSQ([8, 5, 5, 5]), ConditionalViTDecoder(dim=32, depth=1, heads=2), init_from_intra=False)
    state = {}
    for prefix in ("codec", "ema"):
        old = to_legacy({**getattr(module, prefix).export_dict()})["state_dict"]
        state.update({f"{prefix}.{k}": v + 1 for k, v in old.items()})
    state.update({k: v for k, v in module.state_dict().items() if not k.startswith(("codec.", "ema."))})
    checkpoint = {"state_dict": state}
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(module.codec.decoder.blend.bias, torch.full_like(module.codec.decoder.blend.bias, 4.0))
