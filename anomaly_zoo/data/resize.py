"""The image resize of every dataset (PIL, antialiased like the papers); numpy + PIL only.

Shared by the datasets (:func:`anomaly_zoo.data.transforms.resize_pair`) and the torch-free ``predict`` of
exported models (:mod:`anomaly_zoo.export.runtime`), so both feed a model the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["PIL_MODES", "resize_image"]

PIL_MODES = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def resize_image(image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """(H, W, 3) uint8 → ``size`` = (h, w) with ``interpolation`` (one of :data:`PIL_MODES`)."""
    if interpolation not in PIL_MODES:
        raise ValueError(f"Unknown interpolation '{interpolation}'; choose one of {sorted(PIL_MODES)}.")
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), PIL_MODES[interpolation]))
