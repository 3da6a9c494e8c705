"""A learned continuous codec without a token bottleneck (compressai), trained as an evaluation anchor.

    python -m compressor.tools.learned_baseline --input SHARD_DIR --output runs/bmshj2018-factorized --steps 400

Trains compressai's ``bmshj2018-factorized`` (``FactorizedPrior``) on the same ``train-*.tar`` frame shards as our
models, for a step budget (batches of 16, like ``configs/rd``) or a wall-clock one, and saves ``codec.pt``. The Lagrange multiplier is steered during training so the
estimated rate lands near ``--target-bpp`` (0.055 bpp x 128 x 256 pixels = 225 bytes per frame): one run then
gives a point at the token budget instead of a sweep of guesses. ``LearnedCodec`` turns frames into real
entropy-coded byte strings (compressai's rANS), so the reported bytes are bytes, not a likelihood estimate.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import torch
from compressai.models import FactorizedPrior
from torch.utils.data import DataLoader

from compressor.data.frame_shards import FrameShards
from compressor.metrics import psnr
from compressor.utils import atomic_write, cosine

ARCH = "bmshj2018-factorized"


class LearnedCodec:
    """Codec API over a trained compressai model: uint8 frames (B, 3, H, W) <-> one byte string per frame."""

    def __init__(self, net: FactorizedPrior, info: dict):
        self.net = net.eval()
        self.info = info

    @classmethod
    def load(cls, path: str) -> "LearnedCodec":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("arch") != ARCH:
            raise ValueError(f"{path} is not a {ARCH} codec written by compressor.tools.learned_baseline")
        net = FactorizedPrior.from_state_dict(ckpt["state_dict"])
        net.update(force=True)
        return cls(net, {k: v for k, v in ckpt.items() if k != "state_dict"})

    def to(self, device: str | torch.device) -> "LearnedCodec":
        """Run the transforms on ``device``; the rANS coder stays on the CPU, as compressai does it."""
        self.net.to(device)
        return self

    @torch.no_grad()
    def compress(self, frames: torch.Tensor) -> list[bytes]:
        """frames: uint8 (B, 3, H, W), H and W multiples of 16, on any device -> B byte strings."""
        device = next(self.net.parameters()).device
        return self.net.compress(frames.to(device).float() / 255)["strings"][0]

    @torch.no_grad()
    def decompress(self, strings: list[bytes], image_size: tuple[int, int]) -> torch.Tensor:
        """B byte strings -> uint8 (B, 3, H, W) on the CPU."""
        shape = (image_size[0] // 16, image_size[1] // 16)  # the analysis transform downsamples 16x
        x = self.net.decompress([strings], shape)["x_hat"]
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def train(shards: str, output: str, minutes: float, steps: int | None = None, target_bpp: float = 0.055,
          batch_size: int = 16, lr: float = 1e-3, N: int = 128, M: int = 192, num_workers: int = 1,
          seed: int = 0) -> dict:
    """Train for ``steps`` steps or ``minutes`` of wall clock, whichever ends first; save ``output/codec.pt``."""
    torch.manual_seed(seed)
    urls = sorted(glob.glob(os.path.join(shards, "train-*.tar")))
    if not urls:
        raise FileNotFoundError(f"no train-*.tar shards in {shards}; write them with compressor.tools.make_shards")
    frames_ds = FrameShards(urls, batch_size, num_workers, shuffle=True, seed=seed)
    loader = DataLoader(frames_ds, batch_size=batch_size, num_workers=num_workers, drop_last=True)
    net = FactorizedPrior(N, M)
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    density = [p for n, p in net.named_parameters() if n.startswith("entropy_bottleneck.") and not n.endswith(".quantiles")]
    transforms = [p for n, p in net.named_parameters() if not n.startswith("entropy_bottleneck.")]
    main = transforms + density
    # The factorized density starts broad (init_scale 10) and sets the rate floor; at the transforms' learning rate
    # it sharpens too slowly for a CPU budget of minutes, so it learns 10x faster.
    opt = torch.optim.Adam([{"params": transforms, "base_lr": lr}, {"params": density, "base_lr": 10 * lr}], lr=lr)
    aux_opt = torch.optim.Adam(aux, lr=1e-3)
    # About half compressai's lowest-quality MSE lambda (0.0018): low rates need less; the controller below then
    # moves it towards target_bpp.
    lam, bpp_ema, step, epoch = 1e-3, None, 0, 0
    budget, t0 = minutes * 60, time.perf_counter()
    def progress() -> float:
        return max((time.perf_counter() - t0) / budget, step / steps if steps else 0.0)

    while progress() < 1:
        frames_ds.set_epoch(epoch)
        epoch += 1
        for frames in loader:
            elapsed = time.perf_counter() - t0
            if progress() >= 1:
                break
            x = frames.float() / 255
            out = net(x)
            bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / (x.shape[0] * x.shape[2] * x.shape[3])
            mse = (out["x_hat"] - x).pow(2).mean()
            loss = lam * 255**2 * mse + bpp
            # Cosine decay over the budget (steps or wall clock), as the token models use.
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * cosine(progress())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(main, 1.0)
            opt.step()
            aux_opt.zero_grad()
            net.aux_loss().backward()
            aux_opt.step()
            bpp_ema = bpp.item() if bpp_ema is None else 0.9 * bpp_ema + 0.1 * bpp.item()
            if step % 10 == 0 and step >= 20:
                lam *= min(max(target_bpp / bpp_ema, 0.8), 1.25)
            if step % 50 == 0:
                db = psnr(out["x_hat"].detach(), x, peak=1.0).mean().item()
                print(f"step {step} {elapsed:.0f}s bpp {bpp_ema:.4f} psnr {db:.2f} lambda {lam:.5f}", flush=True)
            step += 1
    net.update(force=True)
    summary = {"arch": ARCH, "N": N, "M": M, "steps": step, "train_seconds": time.perf_counter() - t0,
               "lambda": lam, "target_bpp": target_bpp, "train_bpp_estimate": bpp_ema, "batch_size": batch_size}
    os.makedirs(output, exist_ok=True)
    with atomic_write(os.path.join(output, "codec.pt")) as tmp:
        torch.save({**summary, "state_dict": net.state_dict()}, tmp)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.learned_baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="frame shards: a folder of train-*.tar from compressor.tools.make_shards")
    ap.add_argument("--output", required=True, help="folder for codec.pt")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    ap.add_argument("--steps", type=int, default=None, help="step budget (batches); the run ends at either budget")
    ap.add_argument("--target-bpp", type=float, default=0.055)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    summary = train(args.input, args.output, args.minutes, args.steps, args.target_bpp, args.batch_size, args.lr)
    print(f"saved {os.path.join(args.output, 'codec.pt')}: {summary}")


if __name__ == "__main__":
    main()
