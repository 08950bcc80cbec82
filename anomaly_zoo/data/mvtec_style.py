"""The MVTec AD layout parser, shared by every dataset laid out like it (MVTec AD, MPDD, BTAD)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.data.layout import missing_mask_error, require_images, subdirs


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
