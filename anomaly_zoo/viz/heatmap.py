"""Anomaly-map overlays for people to look at (never used for metrics)."""

from __future__ import annotations

import cv2
import numpy as np


def overlay_heatmap(
    image: np.ndarray, anomaly_map: np.ndarray, value_range: tuple[float, float], alpha: float = 0.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """An (H, W, 3) uint8 picture: the image, its map in the JET colours on top, the mask's outline in green.

    ``value_range`` fixes which scores map to blue and red, so overlays of one run are comparable
    (a per-image min-max would paint every normal image's noise bright red).
    """
    low, high = value_range
    scaled = np.clip((anomaly_map.astype(np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = (image.astype(np.float64) * (1 - alpha) + heat.astype(np.float64) * alpha).round().astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    return out
