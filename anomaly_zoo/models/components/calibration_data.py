"""Which images thresholds are calibrated on: the validation split, else the training images."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from anomaly_zoo.data.collate import collate_samples
from anomaly_zoo.data.dataset import AnomalyDataset
from anomaly_zoo.data.transforms import build_transform

__all__ = ["calibration_loader"]


def calibration_loader(datamodule: Any) -> tuple[DataLoader, str] | None:
    """(loader over the whole calibration set on this process, description); None when there is nothing.

    Every process scores the whole set (no distributed sampler): the calibration set is small and every
    rank then holds the same thresholds without a reduction. The test split is never used.
    """
    batch_size = getattr(datamodule, "eval_batch_size", None) or getattr(datamodule, "batch_size", 32)
    workers = getattr(datamodule, "num_workers", 0)
    dataset = getattr(datamodule, "val_dataset", None)
    if dataset is not None and len(dataset) > 0:
        source = "the validation split"
    else:
        dataset = getattr(datamodule, "train_dataset", None)
        if dataset is None or len(dataset) == 0:
            return None
        if isinstance(dataset, AnomalyDataset):
            # Same images, evaluation transform: no augmentation in the scores the thresholds come from.
            transform = build_transform(datamodule.normalization, ())
            dataset = AnomalyDataset(dataset.samples, transform, dataset.image_size, dataset.interpolation,
                                     split="train")
        # Usually normal images only; the zero-shot protocol trains on a labelled test split (then F1-max applies).
        source = "the training images (no validation split; in-sample scores)"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_samples)
    return loader, source
