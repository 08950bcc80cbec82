"""MVTec LOCO AD: logical and structural anomalies, a validation split, several masks per test image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.io import list_images
from anomaly_zoo.data.layout import missing_mask_error, require_images, subdirs
from anomaly_zoo.data.loco_defects import LOCODefectsDataset
from anomaly_zoo.registry import DATAMODULES


@DATAMODULES.register("mvtec_loco")
class MVTecLOCO(AnomalyDataModule):
    """MVTec LOCO AD (Bergmann et al., IJCV 2022), read from the extracted archive as published.

    Expected layout::

        <root>/
        ├── breakfast_box/
        │   ├── train/
        │   │   └── good/                  000.png, …
        │   ├── validation/
        │   │   └── good/                  000.png, …     → split "val" (normal images only)
        │   ├── test/
        │   │   ├── good/                  000.png, …
        │   │   ├── logical_anomalies/     000.png, …
        │   │   └── structural_anomalies/  000.png, …
        │   └── ground_truth/
        │       ├── logical_anomalies/
        │       │   ├── 000/               000.png, 001.png, …   (one or more masks of test image 000)
        │       │   └── …
        │       └── structural_anomalies/
        │           └── 000/               000.png, …
        ├── juice_bottle/
        └── …                              (5 categories; see ``CATEGORIES``)

    Every mask in ``ground_truth/<defect>/<stem>/`` belongs to test image ``<stem>.png`` and all of
    them are merged (logical OR) into one binary mask — none is dropped. An anomalous image whose
    mask folder is missing or empty is an error. Test batches also carry each defect separately with
    its saturation area from ``<category>/defects_config.json`` (``spro_*`` keys, see
    :mod:`~anomaly_zoo.data.loco_defects`), so the results table adds sPRO per split.

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
    DATASET_NAME = "MVTec LOCO AD"

    def build_dataset(self, categories: Sequence[str], split: str) -> AnomalyDataset | None:
        # sPRO needs every defect mask on its own; the base dataset merges them (data/loco_defects.py).
        return LOCODefectsDataset.wrap(super().build_dataset(categories, split), self.root)

    def make_samples(self, category: str, split: str) -> list[Sample]:
        category_dir = self.root / category
        if split in ("train", "val"):
            folder = "train" if split == "train" else "validation"
            directory = category_dir / folder / "good"
            what = f"{'training' if split == 'train' else 'validation'} images for '{category}'"
            images = require_images(list_images(directory), directory, what)
            return [Sample(str(p), 0, category, (), "good") for p in images]
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")

        test_dir = category_dir / "test"
        samples: list[Sample] = []
        missing: list[tuple[Path, Path]] = []
        for defect_dir in subdirs(test_dir):
            defect = defect_dir.name
            for image in list_images(defect_dir):
                if defect == "good":
                    samples.append(Sample(str(image), 0, category, (), defect))
                    continue
                mask_dir = category_dir / "ground_truth" / defect / image.stem
                masks = list_images(mask_dir)
                if not masks:
                    missing.append((image, mask_dir / "000.png"))
                    continue
                samples.append(Sample(str(image), 1, category, tuple(str(m) for m in masks), defect))
        if missing:
            raise missing_mask_error(
                missing,
                "Each anomalous image '<stem>.png' needs a folder ground_truth/<defect>/<stem>/ of masks.",
            )
        require_images([Path(s.image_path) for s in samples], test_dir, f"test images for '{category}'")
        return samples
