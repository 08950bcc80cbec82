"""Bringing anomaly maps to the mask resolution (one place, so every model resizes the same way)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_map(anomaly_map: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B, 1, h, w) map to ``size``; identity when it already has that size."""
    if tuple(anomaly_map.shape[-2:]) == tuple(size):
        return anomaly_map
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(anomaly_map, size=tuple(size), mode=mode, **kwargs)
