"""VisA, read in place from the raw archive and the official split file (nothing is copied or converted)."""

from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.layout import format_list, missing_mask_error
from anomaly_zoo.data.transforms import ImageSize
from anomaly_zoo.registry import DATAMODULES

_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}


@DATAMODULES.register("visa")
class VisA(AnomalyDataModule):
    """VisA (Zou et al., ECCV 2022), read from the extracted ``VisA_20220922.tar`` as published.

    Expected layout::

        <root>/
        ├── split_csv/
        │   └── 1cls.csv                   object,split,label,image,mask   (the official split)
        ├── candle/
        │   └── Data/
        │       ├── Images/
        │       │   ├── Normal/            0000.JPG, …
        │       │   └── Anomaly/           000.JPG, …
        │       └── Masks/
        │           └── Anomaly/           000.png, …
        ├── capsules/
        └── …                              (12 categories; see ``CATEGORIES``)

    The split file decides which image is in which split (``split`` = ``train``/``test``, ``label`` =
    ``normal``/``anomaly``); its ``image`` and ``mask`` paths are relative to ``root``. A category is
    available when the split file lists it and its folder exists. Masks are binarised (``> 0``) when
    read, whatever values they store. The official split files have no validation rows, so
    ``val_dataset`` is ``None`` (a custom split file may add ``split`` = ``val`` rows).

    Args:
        split_file: the split CSV, relative to ``root`` (or absolute); e.g. ``split_csv/2cls_highshot.csv``.
        others: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = (
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
        "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    )  # fmt: skip
    DATASET_NAME = "VisA"

    def __init__(
        self,
        root: str | Path,
        category: str | list[str] = "all",
        image_size: ImageSize = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        normalization: str = "imagenet",
        interpolation: str = "bilinear",
        train_augmentations: list[str] | None = None,
        cache: str = "auto",
        split_file: str | Path = "split_csv/1cls.csv",
    ) -> None:
        super().__init__(
            root=root,
            category=category,
            image_size=image_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            normalization=normalization,
            interpolation=interpolation,
            train_augmentations=train_augmentations,
            cache=cache,
        )
        self.split_file = self.root / Path(split_file).expanduser()

    @cached_property
    def _rows(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        """Split-file rows grouped as ``{object: {split: [row, …]}}`` (read once)."""
        if not self.split_file.is_file():
            raise DatasetError(
                f"VisA split file not found: '{self.split_file}' (check `split_file`; the official "
                "'split_csv/1cls.csv' ships inside VisA_20220922.tar next to the category folders)."
            )
        with open(self.split_file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [c.strip() for c in reader.fieldnames or []]
            lacking = [c for c in _COLUMNS if c not in header]
            if lacking:
                raise DatasetError(
                    f"VisA split file '{self.split_file}' lacks column(s) {lacking}; expected header "
                    f"{','.join(_COLUMNS)}."
                )
            grouped: dict[str, dict[str, list[dict[str, str]]]] = {}
            for line, raw in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                if not any(row.values()):
                    continue
                if row["label"] not in _LABELS:
                    raise DatasetError(
                        f"VisA split file '{self.split_file}' line {line}: label '{row['label']}' is not "
                        f"one of {sorted(_LABELS)}."
                    )
                grouped.setdefault(row["object"], {}).setdefault(row["split"], []).append(row)
        return grouped

    def available_categories(self) -> list[str]:
        listed = [c for c in self._rows if (self.root / c).is_dir()]
        known = [c for c in self.CATEGORIES if c in listed]
        return known + sorted(c for c in listed if c not in known)

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        rows = self._rows.get(category, {}).get(split, [])
        if not rows and split == "val":
            return []  # the official split files have no validation rows
        if not rows:
            raise DatasetError(
                f"VisA split file '{self.split_file}' lists no '{split}' images for '{category}'."
            )
        samples: list[Sample] = []
        absent: list[Path] = []
        missing_masks: list[tuple[Path, Path]] = []
        for row in rows:
            image = self.root / row["image"]
            if not image.is_file():
                absent.append(image)
                continue
            label = _LABELS[row["label"]]
            if label == 0:
                samples.append(Sample(str(image), 0, category, (), "good"))
                continue
            mask = (
                self.root / row["mask"]
                if row["mask"]
                else self.root / category / "Data/Masks/Anomaly" / (image.stem + ".png")
            )
            if not mask.is_file():
                missing_masks.append((image, mask))
                continue
            samples.append(Sample(str(image), 1, category, (str(mask),), "anomaly"))
        if absent:
            raise DatasetError(
                f"{len(absent)} image(s) listed in '{self.split_file}' do not exist:\n"
                f"{format_list([repr(str(p)) for p in absent])}\nPaths in the split file are relative to `root`."
            )
        if missing_masks:
            raise missing_mask_error(
                missing_masks, f"Mask paths come from the 'mask' column of '{self.split_file}'."
            )
        return samples
