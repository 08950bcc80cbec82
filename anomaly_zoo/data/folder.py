"""A generic folder layout (normal / abnormal / mask directories), e.g. for medical anomaly-detection sets."""

from __future__ import annotations

import random
from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.images import FOLDER_CATEGORY, folder_predict_samples
from anomaly_zoo.data.io import list_images, match_by_stem, require_dir
from anomaly_zoo.data.layout import missing_mask_error
from anomaly_zoo.data.transforms import ImageSize
from anomaly_zoo.registry import DATAMODULES


@DATAMODULES.register("folder")
class Folder(AnomalyDataModule):
    """Any dataset stored as folders of normal images, anomalous images and (optionally) masks.

    Example layout (names are free; each directory is an option, relative to ``root`` or absolute)::

        <root>/
        ├── train/good/          normal_dir         normal images for training
        ├── test/good/           normal_test_dir    normal test images (optional)
        ├── test/Ungood/img/     abnormal_dir       anomalous test images (optional)
        └── test/Ungood/label/   mask_dir           one mask per anomalous image (optional)

    e.g. BMAD BraTS2021: ``Folder(root="BraTS2021_slice", normal_dir="train/good",
    normal_test_dir="test/good", abnormal_dir="test/Ungood/img", mask_dir="test/Ungood/label",
    category="brain_mri")``.

    - Masks are matched to anomalous images by file stem: ``<stem>.<ext>`` or ``<stem>_mask.<ext>``
      (never by sorted position). With ``mask_dir`` set, an anomalous image without its mask is an
      error; masks without an image are ignored.
    - Without ``mask_dir`` the anomalous images carry image-level labels only (``defect_type`` =
      ``"unlabelled"``, all-zero masks): image metrics are valid, pixel metrics are not.
    - Without ``normal_test_dir``, a seeded random fraction ``normal_split_ratio`` of the images in
      ``normal_dir`` moves to the test split (always the same images for the same ``seed``).
    - There is no validation split: ``val_dataset`` is ``None``.

    Args:
        root: base of the relative directories below; ``None`` = current directory.
        normal_dir: normal (defect-free) images; the training split (needed to fit; ``predict`` without any
            of the directories scores every image under ``root``, labels unknown).
        abnormal_dir: anomalous test images.
        mask_dir: masks of the anomalous images (binarised ``> 0``).
        normal_test_dir: normal test images.
        category: the name this data carries in batches and result tables (a single name).
        normal_split_ratio: fraction of ``normal_dir`` moved to test when there is no ``normal_test_dir``.
        seed: seed of that split.
        others: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    DATASET_NAME = "Folder"

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        normal_dir: str | Path | None = None,
        abnormal_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        normal_test_dir: str | Path | None = None,
        category: str = FOLDER_CATEGORY,
        normal_split_ratio: float = 0.2,
        seed: int = 0,
        image_size: ImageSize = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        normalization: str = "imagenet",
        interpolation: str = "bilinear",
        train_augmentations: list[str] | None = None,
        cache: str = "auto",
    ) -> None:
        if not isinstance(category, str) or category == "all" or not category:
            raise DatasetError(f"Folder `category` must be one name for this data (got {category!r}).")
        if not 0.0 <= normal_split_ratio < 1.0:
            raise DatasetError(f"`normal_split_ratio` must be in [0, 1), got {normal_split_ratio}.")
        self._has_root = root is not None
        super().__init__(
            root=root if root is not None else ".",
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
        self.normal_dir = self._path(normal_dir)
        self.abnormal_dir = self._path(abnormal_dir)
        self.mask_dir = self._path(mask_dir)
        self.normal_test_dir = self._path(normal_test_dir)
        self.normal_split_ratio = normal_split_ratio
        self.seed = seed
        if self.mask_dir is not None and self.abnormal_dir is None:
            raise DatasetError(
                "`mask_dir` is set but `abnormal_dir` is not: masks belong to anomalous images."
            )

    def _path(self, path: str | Path | None) -> Path | None:
        return None if path is None else self.root / Path(path).expanduser()

    # ---- categories: exactly one ------------------------------------------------------------------
    def check_root(self) -> None:
        if self._has_root:
            require_dir(self.root, "Folder root")

    def available_categories(self) -> list[str]:
        return [self.category]

    def resolve_categories(self) -> list[str]:
        self.check_root()
        return [self.category]

    # ---- samples ---------------------------------------------------------------------------------
    def _images(self, directory: Path, option: str) -> list[Path]:
        require_dir(directory, f"Folder `{option}`", option=option)
        images = list_images(directory)
        if not images:
            raise DatasetError(f"Folder `{option}` '{directory}' holds no image files.")
        return images

    def _normal_split(self) -> tuple[list[Path], list[Path]]:
        """(train, test) normal images; the test part is a seeded sample unless ``normal_test_dir`` is set."""
        if self.normal_dir is None:  # predict-only use: no training images
            return [], (self._images(self.normal_test_dir, "normal_test_dir") if self.normal_test_dir else [])
        normals = self._images(self.normal_dir, "normal_dir")
        if self.normal_test_dir is not None:
            return normals, self._images(self.normal_test_dir, "normal_test_dir")
        n_test = round(len(normals) * self.normal_split_ratio)
        if n_test >= len(normals):
            n_test = len(normals) - 1
        chosen = set(random.Random(self.seed).sample(range(len(normals)), n_test))
        train = [p for i, p in enumerate(normals) if i not in chosen]
        test = [p for i, p in enumerate(normals) if i in chosen]
        return train, test

    def setup(self, stage: str | None = None) -> None:
        # predict scores every image given, once (not the seeded test fraction), with the labels its folders give.
        if stage != "predict":
            return super().setup(stage)
        self.categories = self.resolve_categories()
        self.test_dataset = self.build_dataset(self.categories, "predict")

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split == "predict":
            return folder_predict_samples(self, category)
        if split == "train" and self.normal_dir is None:
            raise DatasetError("Folder `normal_dir` (the normal training images) is needed to fit; `predict` "
                               "works without it.")
        if split == "val":
            return []
        if split not in ("train", "test"):
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        train, normal_test = self._normal_split()
        if split == "train":
            return [Sample(str(p), 0, category, (), "good") for p in train]

        samples = [Sample(str(p), 0, category, (), "good") for p in normal_test]
        if self.abnormal_dir is not None:
            abnormal = self._images(self.abnormal_dir, "abnormal_dir")
            if self.mask_dir is None:
                samples += [Sample(str(p), 1, category, (), "unlabelled") for p in abnormal]
            else:
                require_dir(self.mask_dir, "Folder `mask_dir`", option="mask_dir")
                pairs = match_by_stem(abnormal, list_images(self.mask_dir), ("", "_mask"))
                missing = [(p, self.mask_dir / f"{p.stem}.png") for p in abnormal if p not in pairs]
                if missing:
                    raise missing_mask_error(
                        missing,
                        "Masks in `mask_dir` are matched by stem: '<stem>.<ext>' or '<stem>_mask.<ext>'.",
                    )
                samples += [Sample(str(p), 1, category, (str(pairs[p]),), "abnormal") for p in abnormal]
        if not samples:
            raise DatasetError(
                f"Folder '{category}' has no test images: set `abnormal_dir` or `normal_test_dir`, or a "
                "`normal_split_ratio` > 0."
            )
        return samples
