"""Evaluate trained compressors against classical and learned codecs at matched bytes per frame.

    python -m compressor.tools.evaluate --checkpoint runs/x/model.pt [more.pt ...] --input ../shared/dashcam --split val \\
        --output reports/eval [--learned runs/bmshj2018-factorized/codec.pt] [--lpips-weights vgg.pth vgg16.pth] \\
        [--device auto|cuda|cpu]

``--checkpoint`` takes ``model.pt``, a ``train.py`` ``.ckpt``, a Hub folder (``save_pretrained``) or a video codec
(``video.pt``), which is evaluated on whole clips: every frame coded in order, in its groups. Our models and the
learned baseline run on ``--device`` (``auto``: CUDA when available); the classical codecs and metrics run on the CPU.

Every method sees the same frames after the same ``compressor.preprocess``:

- ours: ``preprocess -> encode -> pack -> unpack -> decode`` (the numbers a user of the checkpoint gets), for each
  checkpoint, on every frame (``report.json`` -> ``checkpoints``) and on the comparison frames;
- JPEG / WebP / AVIF through Pillow, at full size and downscaled + bicubic upsampling, searched per frame for
  the best PSNR within the budget (``compressor.tools.baselines``);
- HEVC (x265) over whole clips at the QP whose average bytes per frame fit the budget;
- optionally compressai's ``bmshj2018-factorized`` trained by ``compressor.tools.learned_baseline``.

Image codecs are searched on every ``--frame-stride``-th frame (the comparison frames); the video codec encodes
every frame, as it must, and is scored on the same comparison frames. Writes ``report.json``, ``report.md``,
``rd.png`` (PSNR against bytes per frame) and ``gallery.png`` (the same frames from every method). ``--card`` also
writes the results into the model card of each Hub-folder checkpoint (its ``model-index`` and an Evaluation section),
one evaluation per inputs, split and search steps (``write_evaluation``).
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import sys
import time

import torch
from tqdm import tqdm

from compressor.tools import baselines
from compressor.tools.eval_report import card_results, comparison_markdown, to_markdown
from compressor.codec.autoencoder import Autoencoder
from compressor.codec.hub import write_evaluation
from compressor.codec.clips import clip_codec, clip_tokens, transmit
from compressor.codec.video import VideoCodec, load_codec
from compressor.metrics import LPIPS, frame_ms_ssim, frame_psnr
from compressor.data.video import list_videos, open_video, read_frames, read_manifest
from compressor.latents.groups import codec_fields, is_video
from compressor.benchmark import sync, write_report
from compressor.utils import batched, num_params, resolve_device, token_entropy_bits

RD_BUDGETS = (48, 64, 96, 128, 160, 224, 320, 448, 640, 896, 1280)


# ---- our codec, every frame --------------------------------------------------------------------------------------
def codec_roundtrip(codec, frames: torch.Tensor, search_steps: int = 0) -> dict:
    """uint8 (T, 3, H, W) of one clip, in order, on the CPU, through a clip codec (``compressor.codec.clips``):
    encode -> pack -> unpack -> decode on the codec's device, a decoder that has only the bytes. Returns recon uint8
    (T, 3, H, W) and every frame's tokens concatenated (for codebook statistics) on the CPU, the packed bytes of
    each frame and their mean (each frame at its type's bits: ``clips.transmit``), and timings."""
    device = next(codec.intra.parameters()).device
    t0 = time.perf_counter()
    tokens = clip_tokens(codec, frames, search_steps)
    sync(device)  # CUDA runs asynchronously: without this, encode time would be counted as decode time
    t1 = time.perf_counter()
    received, sizes = transmit(codec, tokens)
    recon = codec.decode_clip(received).cpu()
    return {"recon": recon, "tokens": torch.cat(tokens).cpu(), "bytes": sizes,
            "bytes_per_frame": sum(sizes) / len(frames), "encode_s": t1 - t0, "decode_s": time.perf_counter() - t1}


def evaluate_clip(codec, path: str, search_steps: int = 0) -> dict:
    """Per-clip metrics of one clip codec on every frame, plus token counts for codebook statistics."""
    frames = read_frames(path, codec.image_size)
    r = codec_roundtrip(codec, frames, search_steps)
    psnr = batched(frame_psnr, r["recon"], frames, size=64)
    ssim = batched(frame_ms_ssim, r["recon"], frames, size=64)
    counts = torch.bincount(r["tokens"].flatten(), minlength=codec.codebook_size).double()
    return {"clip": os.path.basename(path), "frames": len(frames), "psnr": psnr.mean().item(),
            "ms_ssim": ssim.mean().item(), "bytes_per_frame": r["bytes_per_frame"],
            "encode_fps": len(frames) / r["encode_s"], "decode_fps": len(frames) / r["decode_s"], "_counts": counts}


def token_stats(counts: torch.Tensor) -> dict:
    return {"codebook_usage": (counts > 0).double().mean().item(), "token_entropy_bits": token_entropy_bits(counts).item()}


def evaluate(model: Autoencoder | VideoCodec, videos: list[str], batch_size: int = 32, progress: bool = True,
             search_steps: int = 0) -> dict:
    """One checkpoint on every frame of ``videos``: per clip and overall (tokens searched for ``search_steps``)."""
    codec = clip_codec(model, batch_size)
    clips = [evaluate_clip(codec, v, search_steps)
             for v in tqdm(videos, desc="every frame", unit="clip", disable=not progress)]
    total = sum(c["frames"] for c in clips)
    counts = sum(c.pop("_counts") for c in clips)
    overall = {
        "frames": total,
        # Frame-weighted means, and the unweighted clip mean, since clips differ a lot in length.
        "psnr": sum(c["psnr"] * c["frames"] for c in clips) / total,
        "psnr_clip_mean": sum(c["psnr"] for c in clips) / len(clips),
        "ms_ssim": sum(c["ms_ssim"] * c["frames"] for c in clips) / total,
        "bytes_per_frame": sum(c["bytes_per_frame"] * c["frames"] for c in clips) / total,
        **token_stats(counts),
        "encode_fps": total / sum(c["frames"] / c["encode_fps"] for c in clips),
        "decode_fps": total / sum(c["frames"] / c["decode_fps"] for c in clips),
    }
    return {"clips": clips, "overall": overall}


def describe(codec) -> tuple[str, dict]:
    """How a report names a clip codec's mode, and the networks whose parameters it counts."""
    if is_video(codec_fields(codec)):
        return (f"video, groups of {codec.gop}: whole clips in order",
                {"intra": codec.intra, "conditional": codec.inter})
    return "per-frame", codec.parts()


def device_info(device: torch.device) -> dict:
    """What the report records about the device: its type, and the card's name on CUDA."""
    info: dict = {"device": device.type}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


# ---- comparison at matched bytes ---------------------------------------------------------------------------------
class Scores:
    """Per-frame results of one method on the comparison frames, per clip."""

    def __init__(self):
        self.clips: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))

    def add(self, clip: str, nbytes, recon: torch.Tensor, frames: torch.Tensor, lpips: LPIPS | None, fits=True,
            setting: str = "") -> None:
        c = self.clips[clip]
        c["bytes"] += [float(b) for b in (nbytes if isinstance(nbytes, (list, tuple)) else [nbytes] * len(frames))]
        c["psnr"] += batched(frame_psnr, recon, frames, size=64).tolist()
        c["ms_ssim"] += batched(frame_ms_ssim, recon, frames, size=64).tolist()
        if lpips is not None:
            c["lpips"] += batched(lpips, recon, frames, size=16).tolist()
        c["fits"] += list(fits) if isinstance(fits, (list, tuple)) else [bool(fits)] * len(frames)
        c["setting"] += list(setting) if isinstance(setting, (list, tuple)) else [setting] * len(frames)

    def summary(self) -> dict:
        def stats(d):
            out = {k: sum(d[k]) / len(d[k]) for k in ("bytes", "psnr", "ms_ssim", "lpips") if d.get(k)}
            out["frames"], out["fits"] = len(d["psnr"]), sum(d["fits"]) / len(d["fits"])
            out["bytes_per_frame"] = out.pop("bytes")
            out["setting"] = collections.Counter(d["setting"]).most_common(1)[0][0]
            return out

        merged = collections.defaultdict(list)
        for d in self.clips.values():
            for k, v in d.items():
                merged[k] += v
        return {"overall": stats(merged), "clips": {name: stats(d) for name, d in self.clips.items()},
                "per_frame": {name: {k: d[k] for k in ("bytes", "psnr", "ms_ssim")} for name, d in self.clips.items()}}


def compare(models: dict[str, Autoencoder | VideoCodec], videos: list[str], budget: int = 224, frame_stride: int = 10,
            codecs=("jpeg", "webp", "avif"), hevc: bool = True, learned=None, lpips: LPIPS | None = None,
            gallery_frames: int = 3, batch_size: int = 32, log=tqdm.write, progress: bool = True,
            search_steps: int = 0) -> dict:
    """All methods on the same comparison frames: scores at ``budget`` bytes, RD points and gallery tiles."""
    first_name = next(iter(models))
    methods_per_clip = len(models) + 2 * len(codecs) + bool(hevc) + (learned is not None)
    bar = tqdm(total=len(videos) * methods_per_clip, desc="comparison", unit="method", disable=not progress)

    def done(clip: str, method: str) -> None:
        bar.set_postfix_str(f"{clip}: {method}", refresh=False)
        bar.update()

    codecs_of = {name: clip_codec(model, batch_size) for name, model in models.items()}
    image_size = codecs_of[first_name].image_size
    scores: dict[str, Scores] = collections.defaultdict(Scores)
    rd: dict[str, list] = collections.defaultdict(list)
    image_rd = collections.defaultdict(lambda: collections.defaultdict(list))  # method -> budget -> [Candidate]
    hevc_rd = collections.defaultdict(lambda: [0, 0.0, 0.0])  # qp -> [frames, bytes sum, psnr sum]
    gallery = collections.defaultdict(list)  # method -> [(uint8 (3, H, W), label)]
    for path in videos:
        clip = os.path.basename(path)
        frames = read_frames(path, image_size)
        idx = list(range(0, len(frames), frame_stride))
        sub = frames[idx]
        picks = _spread(len(sub), gallery_frames)  # sorted, distinct
        if picks:
            gallery["original"] += [(sub[i], clip) for i in picks]
        t0 = time.perf_counter()
        for name, codec in codecs_of.items():
            if codec.gop == 1:  # every frame coded alone: the comparison frames are all it needs
                r = codec_roundtrip(codec, sub, search_steps)
            else:  # coded as the whole clip it is, scored on the comparison frames
                r = codec_roundtrip(codec, frames)
                r["recon"] = r["recon"][idx]
            scores[name].add(clip, r["bytes_per_frame"], r["recon"], sub, lpips, True, f"{r['bytes_per_frame']:.0f} B")
            if name == first_name:
                gallery[name] += _tiles(r["recon"], sub, picks, [r["bytes_per_frame"]] * len(sub))
            done(clip, name)
        for codec in codecs:
            for downscale in (False, True):
                method = f"{codec} ({'downscaled' if downscale else 'full size'})"
                chosen = []
                for frame in sub:
                    cands = baselines.image_candidates(frame, codec, downscale)
                    for b in RD_BUDGETS:
                        image_rd[method][b].append(baselines.best_within(cands, b))
                    chosen.append(baselines.best_within(cands, budget))
                recon = torch.stack([baselines.image_roundtrip(f, codec, c.quality, c.size)[1]
                                     for f, (c, _) in zip(sub, chosen)])
                scores[method].add(clip, [c.nbytes for c, _ in chosen], recon, sub, lpips, [ok for _, ok in chosen],
                                   [f"q{c.quality} at {c.size[0]}x{c.size[1]}" for c, _ in chosen])
                gallery[method] += _tiles(recon, sub, picks, [c.nbytes for c, _ in chosen])
                done(clip, method)
        if hevc:
            fps = clip_fps(path)
            points = baselines.hevc_sweep(frames, fps, keep_frames=idx)
            for p in points:  # frame-weighted over clips, at one QP for all clips
                hevc_rd[p.qp][0] += len(idx)
                hevc_rd[p.qp][1] += p.bytes_per_frame * len(idx)
                hevc_rd[p.qp][2] += p.psnr[idx].sum().item()
            best, ok = baselines.best_video_point(points, budget)
            scores["hevc (x265, inter)"].add(clip, best.bytes_per_frame, best.kept, sub, lpips, ok, f"qp {best.qp}")
            gallery["hevc (x265, inter)"] += _tiles(best.kept, sub, picks, [best.bytes_per_frame] * len(sub))
            done(clip, "hevc")
        if learned is not None:
            strings = [s for i in range(0, len(sub), 16) for s in learned.compress(sub[i : i + 16])]
            recon = torch.cat([learned.decompress(strings[i : i + 16], image_size) for i in range(0, len(sub), 16)])
            sizes = [len(s) for s in strings]
            trained = f"{learned.info.get('steps')} steps, aimed at {learned.info.get('target_bpp')} bpp"
            scores["bmshj2018-factorized (compressai)"].add(clip, sizes, recon, sub, lpips, [s <= budget for s in sizes],
                                                             trained)
            gallery["bmshj2018-factorized (compressai)"] += _tiles(recon, sub, picks, sizes)
            done(clip, "learned")
        log(f"{clip}: {len(sub)} comparison frames of {len(frames)} in {time.perf_counter() - t0:.0f} s")
    bar.close()

    summaries = {m: s.summary() for m, s in scores.items()}
    for name in models:
        o = summaries[name]["overall"]
        rd[name].append((o["bytes_per_frame"], o["psnr"]))
    for method, by_budget in image_rd.items():
        for b, picked in sorted(by_budget.items()):
            if all(ok for _, ok in picked):  # a point only where every frame fits the budget
                rd[method].append((sum(c.nbytes for c, _ in picked) / len(picked),
                                   sum(c.psnr for c, _ in picked) / len(picked)))
    for qp, (n, b, p) in sorted(hevc_rd.items()):
        rd["hevc (x265, inter)"].append((b / n, p / n))
    if learned is not None:
        o = summaries["bmshj2018-factorized (compressai)"]["overall"]
        rd["bmshj2018-factorized (compressai)"].append((o["bytes_per_frame"], o["psnr"]))
    return {"budget": budget, "frame_stride": frame_stride, "image_size": list(image_size), "methods": summaries,
            "learned_training": learned.info if learned is not None else None,
            "rd": {m: sorted(v) for m, v in rd.items()}, "_gallery": gallery}


def _spread(n: int, k: int) -> list[int]:
    """k evenly spread indices into range(n), sorted and distinct (all of them when k >= n)."""
    k = min(k, n)
    return [round((i + 0.5) * n / k - 0.5) for i in range(k)]


def _tiles(recon, frames, picks, nbytes) -> list:
    return [(recon[i], f"{nbytes[i]:.0f} B, {frame_psnr(recon[i][None], frames[i][None]).item():.1f} dB") for i in picks]


def clip_fps(path: str) -> float:
    with open_video(path) as c:
        rate = c.streams.video[0].average_rate
        return float(rate) if rate else 25.0


# ---- reports -----------------------------------------------------------------------------------------------------
def select_videos(inputs: list[str], split: str | None) -> list[str]:
    videos = list_videos(inputs)
    if split:
        videos = [v for v in videos
                  if read_manifest(os.path.dirname(os.path.abspath(v))).get(os.path.basename(v)) == split]
        if not videos:
            raise SystemExit(f"no videos with split {split!r} in a MANIFEST.tsv under {inputs}")
    return videos


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, nargs="+",
                    help="model.pt, train.py .ckpt files or Hub folders; several give several points of our RD curve")
    ap.add_argument("--input", required=True, nargs="+", help="video directories, globs or files")
    ap.add_argument("--split", default=None, help="keep only videos with this split in MANIFEST.tsv (e.g. val)")
    ap.add_argument("--output", default=None, help="directory for report.json, report.md, rd.png, gallery.png")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                    help="where our models and the learned baseline run (auto: cuda when available)")
    ap.add_argument("--budget", type=int, default=224, help="bytes per frame every baseline is matched to")
    ap.add_argument("--frame-stride", type=int, default=10, help="compare on every n-th frame of each clip")
    ap.add_argument("--codecs", nargs="*", default=["jpeg", "webp", "avif"], choices=list(baselines.IMAGE_CODECS))
    ap.add_argument("--no-hevc", action="store_true", help="skip the inter-frame video codec")
    ap.add_argument("--learned", default=None, help="codec.pt from compressor.tools.learned_baseline")
    ap.add_argument("--lpips-weights", nargs=2, metavar=("LIN", "VGG16"), default=None,
                    help="local LPIPS linear weights (lpips' vgg.pth) and a torchvision VGG16 state dict")
    ap.add_argument("--gallery-frames", type=int, default=2, help="gallery frames per clip")
    ap.add_argument("--checkpoints-only", action="store_true", help="only the every-frame report of each checkpoint")
    ap.add_argument("--search-steps", type=int, default=0,
                    help="encode-time token search for our FSQ models (Autoencoder.encode); 0: plain encode")
    ap.add_argument("--card", action="store_true",
                    help="write the results into the model card (README.md) of each checkpoint, all Hub folders")
    args = ap.parse_args(argv)
    if args.card and (files := [c for c in args.checkpoint if not os.path.isdir(c)]):
        ap.error(f"--card writes into Hub folders (save_pretrained, runs/NAME/hub); {files[0]} is a file")
    try:
        device = torch.device(resolve_device(args.device))
    except ValueError as e:
        ap.error(str(e))  # before any video is decoded or model loaded

    videos = select_videos(args.input, args.split)
    models = {_name(c): load_codec(c, map_location=device) for c in args.checkpoint}  # per-frame or video
    if args.search_steps and not all(getattr(clip_codec(m), "supports_search", False) for m in models.values()):
        ap.error("--search-steps is for per-frame models; a video codec (video.pt) encodes clips as they are")
    on = device_info(device)
    report: dict = {"split": args.split, "batch_size": args.batch_size, "search_steps": args.search_steps, **on,
                    "threads": torch.get_num_threads(), "checkpoints": {}}
    md = []
    for (name, model), path in zip(models.items(), args.checkpoint):
        r = evaluate(model, videos, args.batch_size, search_steps=args.search_steps)
        mode, parts = describe(clip_codec(model))
        r.update(checkpoint=path, mode=mode, batch_size=args.batch_size, **on, threads=torch.get_num_threads(),
                 params={**{k: num_params(v) for k, v in parts.items()}, "total": num_params(model)})
        report["checkpoints"][name] = r
        md.append(to_markdown(r, f"{name} ({path}, {mode}) on {args.split or 'all'} clips, every frame"))
        print(md[-1], flush=True)
    if not args.checkpoints_only:
        lpips = None
        if args.lpips_weights:
            lpips = LPIPS(*args.lpips_weights)
        else:
            print("LPIPS skipped: no local weights given (--lpips-weights LIN VGG16); nothing is downloaded.")
        learned = None
        if args.learned:
            from compressor.tools.learned_baseline import LearnedCodec

            learned = LearnedCodec.load(args.learned).to(device)
        comp = compare(models, videos, args.budget, args.frame_stride, args.codecs, not args.no_hevc, learned, lpips,
                       args.gallery_frames, args.batch_size, search_steps=args.search_steps)
        gallery_tiles = comp.pop("_gallery")
        report["comparison"] = comp
        md.append(comparison_markdown(comp))
        print(md[-1])
    if args.output:
        write_report(args.output, "report", report, "\n".join(md))
        if "comparison" in report:
            from compressor.tools import figures

            figures.rd_plot(report["comparison"]["rd"], os.path.join(args.output, "rd.png"), args.budget,
                            f"{args.split or 'all'} clips, every {args.frame_stride}th frame")
            figures.gallery(gallery_tiles, os.path.join(args.output, "gallery.png"))
        print(f"wrote {args.output}/report.json, report.md" + (", rd.png, gallery.png" if "comparison" in report else ""))
    if args.card:
        command = "python -m compressor.tools.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
        dataset = " ".join(os.path.basename(os.path.normpath(i)) for i in args.input)
        for (name, model), path in zip(models.items(), args.checkpoint):
            r = report["checkpoints"][name]
            md = [f"Measured with `{command}`.", "",
                  to_markdown(r, f"{dataset}, {args.split or 'all'} clips, every frame")]
            if "comparison" in report:
                md.append(comparison_markdown(report["comparison"]))
            # A video codec's frames differ in size: its budget is the mean bytes per frame it measured.
            codec = clip_codec(model)
            budget = getattr(codec, "bytes_per_frame", None) or round(r["overall"]["bytes_per_frame"])
            write_evaluation(path, name.removeprefix("ours: "), "\n".join(md),
                             card_results(r["overall"], dataset, args.split, budget, args.search_steps),
                             dataset, args.split, args.search_steps)
            print(f"wrote the evaluation into {path}/README.md")


def _name(checkpoint: str) -> str:
    """A readable method name: the run directory of ``runs/<name>/model.pt`` or ``runs/<name>/hub``, else the file
    stem."""
    if os.path.isdir(checkpoint) and os.path.basename(os.path.normpath(checkpoint)) == "hub":
        checkpoint = os.path.join(os.path.dirname(os.path.normpath(checkpoint)), "model.pt")
    stem = os.path.splitext(os.path.basename(os.path.normpath(checkpoint)))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
    return f"ours: {parent}" if stem == "model" and parent else f"ours: {stem}"


if __name__ == "__main__":
    main()
