"""Anomaly-map overlays for people to look at (never used for metrics)."""

from __future__ import annotations

import cv2
import numpy as np


def overlay_heatmap(
    image: np.ndarray, anomaly_map: np.ndarray, value_range: tuple[float, float], alpha: float = 0.5,
    mask: np.ndarray | None = None, predicted: np.ndarray | None = None,
) -> np.ndarray:
    """An (H, W, 3) uint8 picture: the image, its map in the JET colours on top, the mask's outline in green
    and the predicted region's (``predicted``, a boolean map at the image's size) in white.

    ``value_range`` fixes which scores map to blue and red, so overlays of one run are comparable
    (a per-image min-max would paint every normal image's noise bright red).
    """
    low, high = value_range
    scaled = np.clip((anomaly_map.astype(np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = (image.astype(np.float64) * (1 - alpha) + heat.astype(np.float64) * alpha).round().astype(np.uint8)
    out = np.ascontiguousarray(out)
    # Thicker lines on large images, so an outline stays visible when the picture is shown scaled down.
    thickness = max(1, round(max(out.shape[:2]) / 256))
    for region, colour in ((predicted, (255, 255, 255)), (mask, (0, 255, 0))):
        if region is not None and region.any():
            contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def denormalize(image: np.ndarray, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> np.ndarray:
    """A model input (3, H, W) float back to (H, W, 3) uint8; min-max stretched when the normalisation is unknown."""
    image = np.asarray(image, dtype=np.float64)
    if mean is not None and std is not None:
        rgb = image * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    else:
        rgb = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8).transpose(1, 2, 0)
