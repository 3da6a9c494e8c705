"""What ``compressor.tools.evaluate`` writes: the markdown of its reports and the Hub card's evaluation results."""

from __future__ import annotations

from huggingface_hub import EvalResult


def to_markdown(report: dict, title: str) -> str:
    """Markdown for one checkpoint's every-frame report."""
    rows = [f"## {title}", "", "| clip | frames | PSNR (dB) | MS-SSIM | bytes/frame |", "|---|---:|---:|---:|---:|"]
    for c in report["clips"]:
        rows.append(f"| {c['clip']} | {c['frames']} | {c['psnr']:.2f} | {c['ms_ssim']:.4f} | {c['bytes_per_frame']:.0f} |")
    o = report["overall"]
    rows.append(f"| **all (frame-weighted)** | {o['frames']} | {o['psnr']:.2f} | {o['ms_ssim']:.4f} | "
                f"{o['bytes_per_frame']:.0f} |")
    rows += ["", f"codebook usage {o['codebook_usage']:.1%}, token entropy {o['token_entropy_bits']:.2f} bits/token, "
             f"encode {o['encode_fps']:.1f} frames/s, decode {o['decode_fps']:.1f} frames/s "
             f"(batch {report.get('batch_size')}, {report.get('device_name') or report.get('device')}, "
             f"{report.get('threads')} threads)", ""]
    return "\n".join(rows)


def comparison_markdown(comp: dict) -> str:
    """Markdown for the matched-bytes comparison: overall table, per-clip PSNR, and the RD points."""
    methods = comp["methods"]
    has_lpips = any("lpips" in m["overall"] for m in methods.values())
    budget = comp["budget"]
    rows = [f"## All methods at <= {budget} bytes per frame", "",
            f"Same frames for every method: every {comp['frame_stride']}th frame of each clip "
            f"({next(iter(methods.values()))['overall']['frames']} frames). 'fits' is the share of frames within "
            f"{budget} B; where a codec cannot get that small, its smallest output is scored instead.", "",
            "| method | bytes/frame | fits | PSNR (dB) | MS-SSIM |" + (" LPIPS |" if has_lpips else "") + " typical setting |",
            "|---|---:|---:|---:|---:|" + ("---:|" if has_lpips else "") + "---|"]
    for name, m in methods.items():
        o = m["overall"]
        lp = f" {o['lpips']:.4f} |" if has_lpips else ""
        rows.append(f"| {name} | {o['bytes_per_frame']:.0f} | {o['fits']:.0%} | {o['psnr']:.2f} | {o['ms_ssim']:.4f} |"
                    f"{lp} {o['setting']} |")
    clips = list(next(iter(methods.values()))["clips"])
    pixels = comp["image_size"][0] * comp["image_size"][1]
    for name, m in methods.items():
        if "compressai" in name:
            rows += ["", f"{name}: {8 * m['overall']['bytes_per_frame'] / pixels:.3f} bpp actual (entropy-coded bytes "
                     f"x 8 / {pixels} pixels)."]
    rows += ["", "PSNR (dB) per clip:", "", "| method | " + " | ".join(clips) + " |",
             "|---|" + "---:|" * len(clips)]
    for name, m in methods.items():
        rows.append(f"| {name} | " + " | ".join(f"{m['clips'][c]['psnr']:.2f}" for c in clips) + " |")
    rows += ["", "## Rate-distortion points (bytes/frame, PSNR dB)", ""]
    for name, points in comp["rd"].items():
        rows.append(f"- {name}: " + ", ".join(f"({b:.0f}, {p:.2f})" for b, p in points))
    if not has_lpips:
        rows += ["", "LPIPS skipped: no local weights given (--lpips-weights LIN VGG16); nothing is downloaded."]
    return "\n".join(rows) + "\n"


def card_results(overall: dict, dataset: str, split: str | None, budget: int, search_steps: int = 0) -> list:
    """The Hub's evaluation results (model-index) of one checkpoint's every-frame report, its tokens searched for
    ``search_steps`` at encode time. The task name says so: the Hub tells results apart by task and dataset, so a
    searched evaluation's would otherwise pass for (and replace) a plain one's."""
    search = f", tokens searched for {search_steps} steps at encode time" if search_steps else ""
    task = dict(task_type="image-to-image", task_name=f"frame compression, {budget} bytes per frame{search}",
                dataset_type=dataset, dataset_name=dataset, dataset_split=split)
    return [EvalResult(**task, metric_type="psnr", metric_name="PSNR (dB), mean over clips",
                       metric_value=round(overall["psnr_clip_mean"], 2)),
            EvalResult(**task, metric_type="psnr", metric_name="PSNR (dB), mean over frames",
                       metric_value=round(overall["psnr"], 2)),
            EvalResult(**task, metric_type="ms_ssim", metric_name="MS-SSIM", metric_value=round(overall["ms_ssim"], 4)),
            EvalResult(**task, metric_type="bytes_per_frame", metric_name="bytes per frame",
                       metric_value=round(overall["bytes_per_frame"], 1))]
