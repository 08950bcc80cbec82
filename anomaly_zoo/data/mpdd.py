"""MPDD (Metal Parts Defect Detection), an MVTec-style layout read with the shared MVTec-style parser."""

from __future__ import annotations

from anomaly_zoo.data.mvtec_style import MVTecStyleDataModule
from anomaly_zoo.registry import DATAMODULES


@DATAMODULES.register("mpdd")
class MPDD(MVTecStyleDataModule):
    """MPDD (Jezek et al., ICUMT 2021), read from the extracted archive as published.

    MPDD has no automatic download (it is hosted on a shared drive): get it from
    https://github.com/stepanje/MPDD and point ``root`` at the folder holding the categories.

    Expected layout::

        <root>/
        ├── bracket_black/
        │   ├── train/
        │   │   └── good/             000.png, …
        │   ├── test/
        │   │   ├── good/             000.png, …
        │   │   ├── hole/             000.png, …
        │   │   └── …                 (one folder per defect type)
        │   └── ground_truth/
        │       ├── hole/             000_mask.png  (or 000.png), …
        │       └── …
        ├── bracket_brown/
        └── …                         (6 categories; see ``CATEGORIES``)

    Masks are matched by stem and may be named ``<stem>_mask.png`` or ``<stem>.png``; an anomalous
    image without its mask is an error. No validation split: ``val_dataset`` is ``None``.

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
    DATASET_NAME = "MPDD"
    MASK_SUFFIXES = ("_mask", "")
