"""Polyp segmentation test sets (CVC-ClinicDB, CVC-ColonDB, CVC-300, Kvasir, Endo, ETIS) as zero-shot anomaly sets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.data.layout import missing_mask_error, require_images
from anomaly_zoo.data.mask_threshold import ThresholdMaskDataset
from anomaly_zoo.registry import DATAMODULES

#: (images folder, masks folder) pairs, in the order they are tried.
FOLDER_PAIRS = (
    ("images", "masks"),
    ("test dataset/images", "test dataset/masks"),
    ("Original", "Ground Truth"),
    ("PNG/Original", "PNG/Ground Truth"),
)
MASK_THRESHOLD = 127


@DATAMODULES.register("polyp")
class Polyp(AnomalyDataModule):
    """Colonoscopy polyp sets; every image shows a polyp, so they evaluate pixel metrics only (zero-shot).

    Layouts (``root`` holds one folder per set, each a category)::

        <root>/
        ├── CVC-ColonDB/  images/1.png …   masks/1.png …      PraNet's TestDataset copies
        ├── CVC-300/      images/149.png … masks/149.png …    (Fan et al., MICCAI 2020, GitHub
        ├── CVC-ClinicDB/ images/ masks/                        DengPingFan/PraNet)
        ├── Kvasir/       images/ masks/
        ├── Kvasir-SEG/   images/cju0qkwl35piu0993l0dewei2.jpg … masks/<same name>.jpg  (JPEG masks)
        ├── CVC-ClinicDB/ Original/1.tif … "Ground Truth"/1.tif …   (the original release: TIFF)
        ├── Endo/         images/*.jpg  masks/*.png             (EndoTect 2020 segmentation test set)
        └── Endo/         "test dataset"/images/*.jpg "test dataset"/masks/*.jpg   (MoECLIP's copy)

    MoECLIP's copies (``Colon_clinicDB``, ``Colon_colonDB``, ``Colon_cvc300``, ``Colon_Kvasir``, ``Endo``)
    are the same layouts under other folder names; any folder holding one of the pairs is a category.

    Images and masks pair by stem (extensions may differ). Masks are binarised at grey level ``> 127``:
    Kvasir-SEG's JPEG masks and anti-aliased PNG edges hold intermediate values that ``> 0`` would turn
    into polyp. There are no training images (``fit`` fails; ``test`` and ``predict`` work).

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("CVC-ClinicDB", "CVC-ColonDB", "CVC-300", "Kvasir", "Endo", "ETIS-LaribPolypDB")
    DATASET_NAME = "polyp segmentation"
    DOMAIN = "medical"

    def _pair(self, category: str) -> tuple[Path, Path] | None:
        for images, masks in FOLDER_PAIRS:
            if (self.root / category / images).is_dir() and (self.root / category / masks).is_dir():
                return self.root / category / images, self.root / category / masks
        return None

    def _looks_like_category(self, name: str) -> bool:
        return self._pair(name) is not None

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split in ("train", "val"):
            return []
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        pair = self._pair(category)
        if pair is None:
            folders = " or ".join(f"{a}/ + {b}/" for a, b in FOLDER_PAIRS)
            require_images([], self.root / category, f"polyp images for '{category}' (expected {folders})")
        image_dir, mask_dir = pair
        images = require_images(list_images(image_dir), image_dir, f"polyp images for '{category}'")
        pairs = match_by_stem(images, list_images(mask_dir), ("", "_mask"))
        missing = [(p, mask_dir / f"{p.stem}.png") for p in images if p not in pairs]
        if missing:
            raise missing_mask_error(missing, f"Masks in '{mask_dir}' are matched by file stem.")
        return [Sample(str(p), 1, category, (str(pairs[p]),), "polyp") for p in images]

    def build_dataset(self, categories: Sequence[str], split: str) -> AnomalyDataset | None:
        return ThresholdMaskDataset.wrap(super().build_dataset(categories, split), MASK_THRESHOLD)
