"""MVTec AD, read as the publisher ships it; also the shared parser of MVTec-style layouts (MPDD, BTAD)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.registry import DATAMODULES

#: How many offending files an error message lists before it says "and N more".
_SHOWN = 5


def subdirs(directory: Path) -> list[Path]:
    """Visible sub-directories of ``directory``, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_images(images: list[Path], directory: Path, what: str) -> list[Path]:
    """Fail when a split directory that must hold images is missing or holds none."""
    if not images:
        state = "is empty (no image files)" if directory.is_dir() else "does not exist"
        raise DatasetError(f"No {what}: '{directory}' {state}.")
    return images


def format_list(lines: Sequence[str]) -> str:
    """The first few ``lines`` indented, then "… and N more" (error messages stay readable)."""
    shown = "\n".join(f"  {line}" for line in lines[:_SHOWN])
    return shown + (f"\n  … and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else "")


def missing_mask_error(missing: Sequence[tuple[Path, Path]], hint: str) -> DatasetError:
    """One error for every anomalous image without a mask: (image, expected mask) pairs, first few shown."""
    lines = format_list([f"'{image}' (expected '{expected}')" for image, expected in missing])
    return DatasetError(f"{len(missing)} anomalous image(s) have no ground-truth mask:\n{lines}\n{hint}")


def mvtec_style_samples(
    category_dir: Path,
    category: str,
    split: str,
    *,
    normal_dir: str = "good",
    mask_suffixes: Sequence[str] = ("_mask",),
    mask_extension: str = ".png",
) -> list[Sample]:
    """Samples of one category in the MVTec AD layout (``train/<normal>``, ``test/<defect>``, ``ground_truth``).

    Masks are paired with images by file stem (``<stem><suffix>.<any image ext>``), never by sorted
    position: a missing mask is an error naming the image and the expected mask; a mask without an
    image is ignored. ``split="val"`` returns ``[]`` (these datasets ship no validation split).
    """
    if split == "val":
        return []
    if split == "train":
        directory = category_dir / "train" / normal_dir
        images = require_images(list_images(directory), directory, f"training images for '{category}'")
        return [Sample(str(p), 0, category, (), normal_dir) for p in images]
    if split != "test":
        raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")

    test_dir = category_dir / "test"
    samples: list[Sample] = []
    missing: list[tuple[Path, Path]] = []
    for defect_dir in subdirs(test_dir):
        images = list_images(defect_dir)
        defect = defect_dir.name
        if defect == normal_dir:
            samples += [Sample(str(p), 0, category, (), defect) for p in images]
            continue
        mask_dir = category_dir / "ground_truth" / defect
        pairs = match_by_stem(images, list_images(mask_dir), mask_suffixes)
        for image in images:
            if image not in pairs:
                missing.append((image, mask_dir / f"{image.stem}{mask_suffixes[0]}{mask_extension}"))
                continue
            samples.append(Sample(str(image), 1, category, (str(pairs[image]),), defect))
    if missing:
        accepted = " or ".join(f"'<stem>{s}.<ext>'" for s in mask_suffixes)
        raise missing_mask_error(
            missing,
            f"Masks are matched by file stem: an image '<stem>.<ext>' needs ground_truth/<defect>/{accepted}.",
        )
    require_images([Path(s.image_path) for s in samples], test_dir, f"test images for '{category}'")
    return samples


class MVTecStyleDataModule(AnomalyDataModule):
    """Shared base of datasets laid out like MVTec AD; subclasses set the names below (not registered)."""

    #: Folder of normal images under ``train/`` and ``test/``.
    NORMAL_DIR = "good"
    #: Accepted mask names: ``<image stem><suffix>.<ext>``, first one preferred in error messages.
    MASK_SUFFIXES: tuple[str, ...] = ("_mask",)
    #: Extension shown in error messages for the expected mask file.
    MASK_EXTENSION = ".png"

    def make_samples(self, category: str, split: str) -> list[Sample]:
        return mvtec_style_samples(
            self.root / category,
            category,
            split,
            normal_dir=self.NORMAL_DIR,
            mask_suffixes=self.MASK_SUFFIXES,
            mask_extension=self.MASK_EXTENSION,
        )


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
