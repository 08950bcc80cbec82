"""Synthetic anomaly maps and masks for the metric tests (deterministic, numpy + OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def synthetic_set(
    n: int = 12,
    h: int = 48,
    w: int = 40,
    seed: int = 0,
    low: float = 2.0,
    high: float = 60.0,
    quantum: float | None = None,
    tiny_regions: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(maps float32 (n,h,w), masks uint8 (n,h,w), labels int64 (n,))``.

    Every other image is anomalous with one or two blobs; with ``tiny_regions`` it also gets a one-pixel
    region and two diagonally touching pixels (one 8-connected region). Scores are smooth noise in about
    [low, high], higher on defects; ``quantum`` rounds them to create many ties.
    """
    rng = np.random.default_rng(seed)
    maps = np.empty((n, h, w), np.float32)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 2.0)
        if i % 2:
            for _ in range(int(rng.integers(1, 3))):
                cy, cx = int(rng.integers(4, h - 4)), int(rng.integers(4, w - 4))
                ay, ax = int(rng.integers(1, 6)), int(rng.integers(1, 6))
                cv2.ellipse(masks[i], (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
            if tiny_regions:
                masks[i, 0, w - 1] = 1  # one-pixel region in a corner
                masks[i, h - 3, 1] = masks[i, h - 2, 2] = 1  # diagonal pair: one 8-connected region
            noise += cv2.GaussianBlur(masks[i].astype(np.float32), (0, 0), 1.5) * float(rng.uniform(0.5, 3))
        maps[i] = noise
    maps = (maps - maps.min()) / (maps.max() - maps.min()) * (high - low) + low
    if quantum is not None:
        maps = np.round(maps / quantum) * quantum
    labels = masks.reshape(n, -1).max(1).astype(np.int64)
    return torch.from_numpy(maps.astype(np.float32)), torch.from_numpy(masks), torch.from_numpy(labels)


def batches(n: int, size: int):
    """Slices covering range(n) in batches of ``size``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
