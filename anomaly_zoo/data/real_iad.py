"""Real-IAD, read in place from the image folders and the official JSON split files."""

from __future__ import annotations

import json
from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.layout import format_list
from anomaly_zoo.data.transforms import ImageSize
from anomaly_zoo.registry import DATAMODULES

RESOLUTIONS = ("256", "512", "1024", "raw")
_SPLIT_KEYS = {"train": "train", "test": "test"}


def _read_split_file(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"Cannot read Real-IAD split file '{path}': {err}") from err
    if not isinstance(data, dict) or not any(k in data for k in _SPLIT_KEYS.values()):
        raise DatasetError(
            f"Real-IAD split file '{path}' must be a JSON object with 'train' and/or 'test' lists."
        )
    return data


@DATAMODULES.register("real_iad")
class RealIAD(AnomalyDataModule):
    """Real-IAD (Wang et al., CVPR 2024), read from the release as published.

    Layout (the release's README; e.g. ``realiad_1024`` holds the 1024-px copies)::

        <root>/
        ├── realiad_1024/                         (or realiad_256 / realiad_512 / realiad_raw)
        │   ├── audiojack/
        │   │   ├── OK/S0001/                     audiojack_0001_OK_C1_<time>.jpg … C5 (5 views)
        │   │   └── NG/<defect code>/S0002/       audiojack_0002_NG_<code>_C1_<time>.jpg + .png masks
        │   └── …                                 (30 categories; see ``CATEGORIES``)
        └── realiad_jsons/                        the split files: one <category>.json per category
            ├── realiad_jsons/                    multi-view (every view of every sample)
            ├── realiad_jsons_sv/                 single-view
            └── realiad_jsons_fuiad_0.0/ … _0.4/  fully-unsupervised (noisy training) variants

    A split file is ``{"meta": {"prefix": …, "normal_class": "OK"}, "train": [entry, …], "test": [entry, …]}``
    with entries ``{"category", "anomaly_class", "image_path", "mask_path"}``; paths are relative to the
    category folder, ``mask_path`` is ``null`` for normal images, and ``anomaly_class`` equal to
    ``normal_class`` means normal. An anomalous entry without a mask keeps its image label only
    (``defect_type`` = ``"unlabelled"``, as in the FUIAD training lists). Masks are binarised ``> 0``.

    Args:
        resolution: which image copy to read: ``256``, ``512``, ``1024`` or ``"raw"``.
        split_dir: folder of the split files, relative to ``root``: ``realiad_jsons/realiad_jsons``
            (multi-view, default), ``realiad_jsons/realiad_jsons_sv`` (single-view), …
        others: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = (
        "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts",
        "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator",
        "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy",
        "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor", "vcpill", "wooden_beads",
        "woodstick", "zipper",
    )  # fmt: skip
    DATASET_NAME = "Real-IAD"
    DOMAIN = "industrial"

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
        resolution: int | str = 1024,
        split_dir: str | Path = "realiad_jsons/realiad_jsons",
    ) -> None:
        if str(resolution) not in RESOLUTIONS:
            raise DatasetError(
                f"Real-IAD `resolution` must be one of {list(RESOLUTIONS)}, got {resolution!r}."
            )
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
        self.images_dir = self.root / f"realiad_{resolution}"
        self.split_dir = self.root / Path(split_dir).expanduser()

    def available_categories(self) -> list[str]:
        if not self.split_dir.is_dir():
            raise DatasetError(
                f"Real-IAD split files not found: '{self.split_dir}' is not a directory (check `split_dir`; "
                "the release ships them in realiad_jsons/)."
            )
        listed = {p.stem for p in self.split_dir.glob("*.json")}
        present = [c for c in sorted(listed) if (self.images_dir / c).is_dir()]
        known = [c for c in self.CATEGORIES if c in present]
        return known + [c for c in present if c not in known]

    def check_root(self) -> None:
        super().check_root()
        if not self.images_dir.is_dir():
            found = sorted(p.name for p in self.root.glob("realiad_*") if p.is_dir())
            raise DatasetError(
                f"Real-IAD images not found: '{self.images_dir}' does not exist (check `resolution`; found: "
                f"{', '.join(found) or 'none'})."
            )

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split == "val":
            return []  # the split files have no validation lists
        if split not in _SPLIT_KEYS:
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        path = self.split_dir / f"{category}.json"
        data = _read_split_file(str(path))
        normal = data.get("meta", {}).get("normal_class", "OK")
        base = self.images_dir / category
        samples, absent = [], []
        for entry in data.get(_SPLIT_KEYS[split], []):
            try:
                image, anomaly, mask = (
                    base / entry["image_path"],
                    entry["anomaly_class"],
                    entry.get("mask_path"),
                )
            except (KeyError, TypeError) as err:
                raise DatasetError(f"Real-IAD split file '{path}': entry {entry!r} lacks {err}.") from None
            for p in [image] + ([base / mask] if mask else []):
                if not p.is_file():
                    absent.append(str(p))
            if anomaly == normal:
                samples.append(Sample(str(image), 0, category, (), "good"))
            elif mask:
                samples.append(Sample(str(image), 1, category, (str(base / mask),), str(anomaly)))
            else:
                samples.append(Sample(str(image), 1, category, (), "unlabelled"))
        if absent:
            raise DatasetError(
                f"{len(absent)} file(s) listed in '{path}' do not exist:\n{format_list(absent)}\n"
                f"Paths in the split file are relative to '{base}' (check `resolution`)."
            )
        return samples
