"""Masks binarised at a grey-level threshold instead of ``> 0``: for sets whose masks carry JPEG noise or
anti-aliased edges (Kvasir-SEG's JPEG masks, RSDD, polyp sets, ISIC), where ``> 0`` would turn the noise
into defect pixels. The reference loaders of these sets binarise at half range (``ToTensor() > 0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomaly_zoo.data.dataset import AnomalyDataset
from anomaly_zoo.data.errors import DatasetError

__all__ = ["ThresholdMaskDataset", "read_grey_mask"]


def read_grey_mask(path: str | Path, threshold: int) -> np.ndarray:
    """(H, W) bool: grey level (any colour channel's maximum) ``> threshold``."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB") if image.mode not in ("L", "1", "I;16", "I") else image)
    except OSError as err:
        raise DatasetError(f"Cannot read mask '{path}': {err}") from err
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.dtype == np.uint16 or array.dtype == np.int32:
        array = array / 257.0  # 16-bit masks: compare on the 8-bit scale
    return array > threshold


class ThresholdMaskDataset(AnomalyDataset):
    """An :class:`AnomalyDataset` whose ``mask`` is the union of its masks thresholded at ``threshold``."""

    def __init__(self, base: AnomalyDataset, threshold: int) -> None:
        super().__init__(base.samples, base.transform, base.image_size, base.interpolation, base.split)
        self.threshold = threshold

    @classmethod
    def wrap(cls, dataset: AnomalyDataset | None, threshold: int) -> AnomalyDataset | None:
        return None if dataset is None else cls(dataset, threshold)

    def _mask(self, paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
        merged: np.ndarray | None = None
        for path in paths:
            mask = read_grey_mask(path, self.threshold)
            merged = mask if merged is None else merged | mask
        assert merged is not None
        if merged.shape != size:  # the resize rule of transforms.resize_pair (PIL nearest)
            merged = (
                np.asarray(Image.fromarray(merged.astype(np.uint8) * 255).resize(size[::-1], Image.NEAREST))
                > 0
            )
        return merged

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)  # validates sizes and reads the image
        paths = self.samples[index].mask_paths
        if paths:
            size = tuple(item["mask"].shape[-2:])
            item["mask"] = torch.from_numpy(self._mask(paths, size).astype(np.uint8)).reshape(1, *size)
        return item
