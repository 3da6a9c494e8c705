"""Procedural driving-like scenes: the built-in default data, so the demo and tests run offline.

This is a demo source, not a benchmark: real numbers come from real dashcam video.
A scene has a sky gradient, roadside buildings, a road in perspective with dashed lane marks that move with
ego-motion, and vehicles that grow as they approach.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def driving_scene(seed: int, t: float = 0.0, image_size: tuple[int, int] = (128, 256)) -> Tensor:
    """One frame of the scene numbered ``seed`` at time ``t`` (seconds): uint8 (3, H, W).

    The same seed at increasing ``t`` gives a coherent clip (the camera drives forward).
    """
    H, W = image_size
    rng = np.random.default_rng(seed)
    horizon = H * rng.uniform(0.35, 0.55)
    vanish_x = W * rng.uniform(0.4, 0.6) + 8 * np.sin(0.5 * t + rng.uniform(0, 6))  # gentle steering
    speed = rng.uniform(0.5, 2.0)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.empty((H, W, 3), np.float32)

    # Sky: vertical gradient from a random top colour to a pale horizon.
    top = rng.uniform([40, 80, 150], [140, 170, 250])
    haze = rng.uniform([170, 180, 190], [230, 230, 240])
    a = np.clip(y / max(horizon, 1), 0, 1)[..., None]
    img[:] = top * (1 - a) + haze * a

    # Buildings / trees along the horizon: random-height blocks that scroll sideways slowly.
    n_blocks = rng.integers(6, 14)
    for _ in range(n_blocks):
        bx = (rng.uniform(0, W) + 3 * speed * t * (1 if rng.random() < 0.5 else -1)) % W
        bw, bh = rng.uniform(10, 40), rng.uniform(5, horizon * 0.9)
        colour = rng.uniform(40, 160, 3)
        mask = (np.abs(x - bx) < bw / 2) & (y > horizon - bh) & (y <= horizon)
        img[mask] = colour

    # Ground and road in perspective: depth z ~ 1 / (y - horizon).
    below = y > horizon
    depth = np.where(below, 1.0 / np.maximum(y - horizon, 1e-3), 0)
    ground = rng.uniform([60, 90, 40], [120, 140, 90])
    img[below] = ground
    road_half = 0.9 * (y - horizon)  # the road widens linearly towards the camera
    on_road = below & (np.abs(x - vanish_x) < road_half)
    asphalt = rng.uniform(70, 120)
    img[on_road] = asphalt + 10 * np.sin(40 * depth[on_road])[:, None]  # faint texture that moves with depth

    # Lane marks: dashes in depth that advance with ego-motion.
    phase = (8.0 * depth * 10 - speed * t * 4) % 1.0
    for lane in (-1 / 3, 1 / 3):
        lane_x = vanish_x + lane * road_half
        mark = on_road & (np.abs(x - lane_x) < 0.02 * (y - horizon) + 0.4) & (phase < 0.5)
        img[mark] = 235
    edge = below & (np.abs(np.abs(x - vanish_x) - road_half) < 0.03 * (y - horizon) + 0.5)
    img[edge] = 220

    # Vehicles: boxes on the road whose distance shrinks over time.
    for _ in range(rng.integers(1, 4)):
        dist = 1.0 + (rng.uniform(2, 12) - speed * t * rng.uniform(0.1, 0.5)) % 12  # metres-ish, wraps
        vy = horizon + 60 / dist
        lane = rng.choice([-2 / 3, 0.0, 2 / 3])
        vx = vanish_x + lane * 0.9 * (vy - horizon)
        size = 40 / dist
        body = (np.abs(x - vx) < size) & (y > vy - 1.2 * size) & (y < vy)
        img[body] = rng.uniform(20, 230, 3)
        window = (np.abs(x - vx) < 0.7 * size) & (y > vy - 1.1 * size) & (y < vy - 0.7 * size)
        img[window] = 40
    img += rng.normal(0, 3, img.shape)  # sensor noise
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


def driving_clip(seed: int, num_frames: int, fps: float = 10.0, image_size: tuple[int, int] = (128, 256)) -> Tensor:
    """A coherent clip: uint8 (T, 3, H, W)."""
    return torch.stack([driving_scene(seed, i / fps, image_size) for i in range(num_frames)])
