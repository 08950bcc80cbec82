"""MVTec AD, read as the publisher ships it."""

from __future__ import annotations

from anomaly_zoo.data.mvtec_style import MVTecStyleDataModule
from anomaly_zoo.registry import DATAMODULES


@DATAMODULES.register("mvtec_ad")
class MVTecAD(MVTecStyleDataModule):
    """MVTec AD (Bergmann et al., CVPR 2019), read from the extracted archive as published.

    Expected layout (``root`` is the folder holding the category folders)::

        <root>/
        ├── bottle/
        │   ├── train/
        │   │   └── good/             000.png, 001.png, …
        │   ├── test/
        │   │   ├── good/             000.png, …
        │   │   ├── broken_large/     000.png, …
        │   │   └── …                 (one folder per defect type)
        │   └── ground_truth/
        │       ├── broken_large/     000_mask.png, …   (one mask per anomalous test image)
        │       └── …
        ├── cable/
        └── …                         (15 categories; see ``CATEGORIES``)

    Masks are matched to images by stem (``000.png`` ↔ ``000_mask.png``); an anomalous image without
    its mask is an error. There is no validation split: ``val_dataset`` is ``None``.

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    )  # fmt: skip
    DATASET_NAME = "MVTec AD"
