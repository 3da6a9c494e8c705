"""Figures for the evaluation and benchmark reports: RD curves, speed plots and a side-by-side gallery (PNG)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def rd_plot(rd: dict[str, list[tuple[float, float]]], path: str, budget: int | None = None, title: str = "") -> None:
    """PSNR against bytes per frame, one curve (or point) per method; ours drawn solid, baselines dashed."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, points in rd.items():
        if not points:
            continue
        x, y = zip(*points)
        ours = not any(k in method for k in ("jpeg", "webp", "avif", "hevc", "compressai"))
        ax.plot(x, y, "o-" if ours else "s--", label=method, linewidth=2.5 if ours else 1.2, markersize=5)
    if budget:
        ax.axvline(budget, color="grey", linewidth=0.8, linestyle=":")
        ax.text(budget, ax.get_ylim()[0], f" {budget} B", color="grey", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per frame (128x256)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def speed_plot(rows: list[dict], path: str, title: str = "") -> None:
    """Throughput (frames/s, encode + decode) and batch-1 latency against input size, one line per design."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for design in dict.fromkeys(r["design"] for r in rows):
        rs = [r for r in rows if r["design"] == design]
        labels = [r["resolution"] for r in rs]
        axes[0].plot(labels, [r["throughput_fps"] for r in rs], "o-", label=design)
        axes[1].plot(labels, [r["latency_ms"] for r in rs], "o-", label=design)
    axes[0].set_ylabel("frames/s (encode + decode, best batch)")
    axes[1].set_ylabel("latency at batch 1 (ms, encode + decode)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("input size (H x W), 128 tokens")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gallery(columns: dict[str, list[tuple[torch.Tensor, str]]], path: str, label_height: int = 14) -> None:
    """One row per frame, one column per method: uint8 (3, H, W) tiles, each captioned (bytes, PSNR)."""
    names = list(columns)
    rows = len(columns[names[0]])
    H, W = columns[names[0]][0][0].shape[-2:]
    head, pad = 16, 4
    canvas = Image.new("RGB", (len(names) * (W + pad) + pad, head + rows * (H + label_height + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(names):
        x = pad + c * (W + pad)
        draw.text((x, 2), name, fill="black")
        for r, (tile, label) in enumerate(columns[name][:rows]):
            y = head + r * (H + label_height + pad)
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile.permute(1, 2, 0).numpy())), (x, y))
            draw.text((x, y + H + 1), label, fill="black")
    canvas.save(path)
