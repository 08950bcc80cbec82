"""BTAD (beanTech Anomaly Detection), read from the raw archive: ``.bmp`` and ``.png`` as shipped."""

from __future__ import annotations

from anomaly_zoo.data.mvtec_style import MVTecStyleDataModule
from anomaly_zoo.registry import DATAMODULES


@DATAMODULES.register("btad")
class BTAD(MVTecStyleDataModule):
    """BTAD (Mishra et al., ISIE 2021), read in place from the raw ``BTech_Dataset_transformed`` folders.

    Nothing is converted or renamed on disk: the three products ship different file types and all of
    them are read as they are (01: ``.bmp`` images + ``.png`` masks; 02: ``.png`` + ``.png``;
    03: ``.bmp`` + ``.bmp``).

    Expected layout::

        <root>/
        ├── 01/
        │   ├── train/
        │   │   └── ok/               0000.bmp, …
        │   ├── test/
        │   │   ├── ok/               0000.bmp, …
        │   │   └── ko/               0000.bmp, …
        │   └── ground_truth/
        │       └── ko/               0000.png, …   (same stem as the image, no suffix)
        ├── 02/                       (.png images, .png masks)
        └── 03/                       (.bmp images, .bmp masks)

    Masks are matched to images by stem whatever their extension; an anomalous image without its
    mask is an error. No validation split: ``val_dataset`` is ``None``.

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("01", "02", "03")
    DATASET_NAME = "BTAD"
    NORMAL_DIR = "ok"
    MASK_SUFFIXES = ("",)
    MASK_EXTENSION = ".{png,bmp}"
