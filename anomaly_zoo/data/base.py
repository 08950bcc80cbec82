"""The DataModule every dataset shares: root/category handling, splits, transforms and loaders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from anomaly_zoo.data.collate import collate_samples
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import require_dir
from anomaly_zoo.data.sampler import eval_sampler
from anomaly_zoo.data.transforms import ImageSize, as_hw, build_transform

SPLITS = ("train", "val", "test")


class AnomalyDataModule(pl.LightningDataModule):
    """Base DataModule. Subclasses say where a category's samples live (``make_samples``).

    Args:
        root: dataset root exactly as the publisher ships it.
        category: one category name, a list of names, or ``"all"`` — several categories are
            trained together in one model (the unified / multi-class setting).
        image_size: ``int``, ``(h, w)`` or ``None`` for native size; images and masks are resized to it,
            so metrics are computed at this resolution.
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        num_workers: DataLoader worker processes.
        normalization: ``"imagenet"``, ``"clip"`` or ``"none"``.
        interpolation: image resize filter (PIL): ``"bilinear"`` (UniAD) or ``"bicubic"`` (CLIP models).
        train_augmentations: names from ``anomaly_zoo.data.transforms.AUGMENTATIONS`` (train only).
    """

    #: The publisher's categories, used in error messages and for ``"all"`` ordering.
    CATEGORIES: tuple[str, ...] = ()
    #: Human-readable name used in errors.
    DATASET_NAME: str = "dataset"

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
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.category = category
        self.image_size = as_hw(image_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.normalization = normalization
        self.interpolation = interpolation
        self.train_augmentations = list(train_augmentations or [])
        self.train_dataset: AnomalyDataset | None = None
        self.val_dataset: AnomalyDataset | None = None
        self.test_dataset: AnomalyDataset | None = None

    # ---- what a dataset subclass provides -------------------------------------------------
    def available_categories(self) -> list[str]:
        """Categories present under ``root`` (default: sub-directories, in ``CATEGORIES`` order first)."""
        present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        known = [c for c in self.CATEGORIES if c in present]
        return known + [c for c in present if c not in known and self._looks_like_category(c)]

    def _looks_like_category(self, name: str) -> bool:
        return (self.root / name / "train").is_dir() or (self.root / name / "test").is_dir()

    def make_samples(self, category: str, split: str) -> list[Sample]:
        """All samples of one category and split (``"train"``, ``"val"``, ``"test"``); ``[]`` if none."""
        raise NotImplementedError

    # ---- shared logic ------------------------------------------------------------------------
    def check_root(self) -> None:
        require_dir(self.root, f"{self.DATASET_NAME} root")

    def resolve_categories(self) -> list[str]:
        self.check_root()
        available = self.available_categories()
        if self.category == "all":
            if not available:
                raise DatasetError(f"No {self.DATASET_NAME} categories found under '{self.root}'.")
            return available
        wanted = [self.category] if isinstance(self.category, str) else list(self.category)
        if not wanted:
            raise DatasetError("`category` is empty: give a name, a list of names, or 'all'.")
        missing = [c for c in wanted if c not in available]
        if missing:
            raise DatasetError(
                f"{self.DATASET_NAME} category {missing} not found under '{self.root}' "
                f"(check `category`). Available: {', '.join(available) or 'none'}."
            )
        return wanted

    def build_dataset(self, categories: Sequence[str], split: str) -> AnomalyDataset | None:
        samples = [s for c in categories for s in self.make_samples(c, split)]
        if not samples:
            return None
        augment = self.train_augmentations if split == "train" else ()
        transform = build_transform(self.normalization, augment)
        return AnomalyDataset(samples, transform, self.image_size, self.interpolation, split=split)

    def setup(self, stage: str | None = None) -> None:
        categories = self.resolve_categories()
        self.categories = categories
        if stage in (None, "fit"):
            self.train_dataset = self.build_dataset(categories, "train")
            if self.train_dataset is None:
                raise DatasetError(f"No training images found for {categories} under '{self.root}'.")
        if stage in (None, "fit", "validate"):
            self.val_dataset = self.build_dataset(categories, "val")
        if stage in (None, "test", "predict", "validate") or self.test_dataset is None:
            self.test_dataset = self.build_dataset(categories, "test")
            if self.test_dataset is None and stage in ("test", "predict"):
                raise DatasetError(f"No test images found for {categories} under '{self.root}'.")

    # ---- loaders -------------------------------------------------------------------------------
    def _loader(self, dataset: AnomalyDataset | None, train: bool) -> DataLoader:
        if dataset is None:
            return []  # type: ignore[return-value]  # Lightning skips an empty loader list
        if train:
            return DataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=True,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                drop_last=len(dataset) > self.batch_size,
                collate_fn=collate_samples,
            )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=eval_sampler(dataset),
            num_workers=self.num_workers,
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)
