"""One map-style dataset type for every layout: a list of validated samples plus the transform."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import merge_masks, read_image
from anomaly_zoo.data.transforms import ImageSize, as_hw, resize_pair


@dataclass(frozen=True)
class Sample:
    """One image on disk. ``mask_paths`` is empty for normal images; several masks are OR-ed (MVTec LOCO)."""

    image_path: str
    label: int
    category: str
    mask_paths: tuple[str, ...] = field(default_factory=tuple)
    defect_type: str = "good"

    def __post_init__(self) -> None:
        if self.label == 1 and not self.mask_paths and self.defect_type != "unlabelled":
            raise DatasetError(f"Anomalous image '{self.image_path}' has no ground-truth mask.")


class AnomalyDataset(Dataset):
    """Reads samples as Batch-contract dicts: image (3,H,W) float, mask (1,H,W) uint8, label, category, path, index."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: A.Compose,
        image_size: ImageSize = None,
        interpolation: str = "bilinear",
        split: str = "test",
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.image_size = as_hw(image_size)  # an int means square, as in the DataModules
        self.interpolation = interpolation
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def categories(self) -> list[str]:
        """Categories in first-seen order."""
        return list(dict.fromkeys(s.category for s in self.samples))

    #: The decoded-image cache (``anomaly_zoo.data.image_cache``), attached by the DataModule's loaders.
    image_cache = None

    def decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) bool mask at ``image_size``, before any augmentation."""
        if self.image_cache is not None:
            return self.image_cache.item(index)
        sample = self.samples[index]
        image = read_image(sample.image_path)
        mask = merge_masks(sample.mask_paths, sample.image_path, image.shape[:2])
        return resize_pair(image, mask, self.image_size, self.interpolation)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, mask = self.decoded(index)
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        return {
            "image": out["image"].float(),
            "mask": torch.as_tensor(out["mask"], dtype=torch.uint8).reshape(1, *out["mask"].shape[-2:]),
            "label": torch.tensor(sample.label, dtype=torch.long),
            "category": sample.category,
            "path": sample.image_path,
            "index": torch.tensor(index, dtype=torch.long),
        }
