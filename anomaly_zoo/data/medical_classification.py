"""Image-level medical sets as downloaded from Kaggle: HeadCT, Br35H and Brain MRI (tumour yes/no)."""

from __future__ import annotations

import csv
from pathlib import Path

from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import list_images
from anomaly_zoo.data.layout import format_list, require_images
from anomaly_zoo.data.single_set import SingleSetDataModule
from anomaly_zoo.registry import DATAMODULES


class _YesNo(SingleSetDataModule):
    """Images in ``yes/`` (anomalous) and ``no/`` (normal), possibly one folder down; test split only."""

    DOMAIN = "medical"

    def _base(self) -> Path:
        for candidate in [self.root, *sorted(p for p in self.root.iterdir() if p.is_dir())]:
            if (candidate / "yes").is_dir() and (candidate / "no").is_dir():
                return candidate
        raise DatasetError(
            f"{self.DATASET_NAME}: no 'yes/' and 'no/' folders under '{self.root}' (check `root`)."
        )

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split in ("train", "val"):
            return []
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        base = self._base()
        normal, tumour = list_images(base / "no"), list_images(base / "yes")
        require_images(normal + tumour, base, f"{self.DATASET_NAME} images")
        return [Sample(str(p), 0, category, (), "good") for p in normal] + [
            Sample(str(p), 1, category, (), "unlabelled") for p in tumour
        ]


@DATAMODULES.register("br35h")
class Br35H(_YesNo):
    """Br35H (Hamada, Kaggle "Br35H :: Brain Tumor Detection 2020"), the Kaggle archive extracted.

    Layout::

        <root>/
        ├── yes/    y0.jpg … y1499.jpg        (tumour: anomalous, image label only)
        ├── no/     no0.jpg … no1499.jpg      (normal)
        └── pred/   pred0.jpg …               (unlabelled: ignored)

    A zero-shot image-level set (AnomalyCLIP, AdaCLIP, MoECLIP): all 3000 labelled images are the test
    split; there is no training split and no mask (pixel metrics are undefined, NaN).

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("br35h",)
    DATASET_NAME = "Br35H"


@DATAMODULES.register("brain_mri")
class BrainMRI(_YesNo):
    """Brain MRI Images for Brain Tumor Detection (Chakrabarty, Kaggle 2019), the archive extracted.

    Layout (the archive nests a second copy one level down; either is found)::

        <root>/                              (or <root>/brain_tumor_dataset/)
        ├── yes/    Y1.jpg, Y10.jpg, Y100.JPG, Y19.JPG, … (155; mixed .jpg/.JPG/.png)
        └── no/     1 no.jpeg, No12.jpg, no 90.jpg, …   (98; spaces, mixed case and extensions)

    A zero-shot image-level set (AnomalyCLIP, AdaCLIP, MoECLIP): test split only, no masks.

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("brain_mri",)
    DATASET_NAME = "Brain MRI"


@DATAMODULES.register("headct")
class HeadCT(SingleSetDataModule):
    """Head CT - hemorrhage (Kitamura, Kaggle 2018), the archive extracted.

    Layout::

        <root>/
        ├── labels.csv           id, hemorrhage    (header has a space; ids 0 … 199 unpadded)
        └── head_ct/
            └── head_ct/         000.png … 199.png (ids zero-padded to 3 digits; or head_ct/*.png)

    ``hemorrhage`` 1 = anomalous (image label only), 0 = normal. A zero-shot image-level set: test
    split only, no masks. An image without a row, or a row without its image, is an error. The copy
    AnomalyCLIP / AA-CLIP / MoECLIP distribute (``test/good/*.png``, ``test/defect/*.png``) loads too.

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("headct",)
    DATASET_NAME = "HeadCT"
    DOMAIN = "medical"

    def _labels(self) -> dict[int, int]:
        path = self.root / "labels.csv"
        if not path.is_file():
            raise DatasetError(
                f"HeadCT labels not found: '{path}' (the Kaggle archive ships labels.csv in its root)."
            )
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(handle)]
        try:
            return {int(r["id"]): int(r["hemorrhage"]) for r in rows if r.get("id")}
        except (KeyError, ValueError) as err:
            raise DatasetError(f"'{path}' must have columns 'id' and 'hemorrhage' (0/1): {err}") from None

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split in ("train", "val"):
            return []
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        if (self.root / "test" / "good").is_dir():  # the zero-shot papers' reorganised copy
            good, bad = list_images(self.root / "test" / "good"), list_images(self.root / "test" / "defect")
            require_images(good + bad, self.root / "test", "HeadCT images")
            return [Sample(str(p), 0, category, (), "good") for p in good] + [
                Sample(str(p), 1, category, (), "unlabelled") for p in bad
            ]
        folder = self.root / "head_ct" / "head_ct"
        folder = folder if folder.is_dir() else self.root / "head_ct"
        images = {int(p.stem): p for p in list_images(folder) if p.stem.isdigit()}
        require_images(list(images.values()), folder, "HeadCT images")
        labels = self._labels()
        unmatched = sorted(set(images) ^ set(labels))
        if unmatched:
            lines = [f"id {i}: {'no image' if i in labels else 'no row in labels.csv'}" for i in unmatched]
            raise DatasetError(f"HeadCT images and labels.csv disagree:\n{format_list(lines)}")
        bad = sorted(i for i, v in labels.items() if v not in (0, 1))
        if bad:
            raise DatasetError(f"labels.csv: 'hemorrhage' must be 0 or 1; ids {bad[:5]} have other values.")
        return [
            Sample(str(images[i]), 1, category, (), "unlabelled")
            if labels[i]
            else Sample(str(images[i]), 0, category, (), "good")
            for i in sorted(images)
        ]
