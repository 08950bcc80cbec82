"""The DataModule every dataset shares: root/category handling, splits, transforms and loaders."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from anomaly_zoo.data.collate import collate_samples
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError, DuplicateCategoryWarning
from anomaly_zoo.data.image_cache import attach_image_cache, resolve_cache_mode
from anomaly_zoo.data.io import require_dir
from anomaly_zoo.data.loader_options import evaluation_workers, loader_options
from anomaly_zoo.data.resumable_loader import resumable_train_loader
from anomaly_zoo.data.sampler import eval_sampler
from anomaly_zoo.data.transforms import ImageSize, as_hw, build_transform
from anomaly_zoo.data.validation import check_datasets

SPLITS = ("train", "val", "test")
#: The splits each stage reads (``fit`` validates on ``val``); the CLI adds ``test`` for ``--test_after_fit``.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
                None: ("train", "val", "test")}
#: Sub-folders that mark a category folder (MVTec-style ``train``/``test``, VisA's ``Data``).
CATEGORY_MARKERS = ("train", "test", "ground_truth", "Data")


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
        cache: decoded-image cache, ``auto`` (train/val on disk) | ``off`` | ``memory`` | ``disk`` (every split);
            see :mod:`anomaly_zoo.data.image_cache`.

    ``check_files(splits)`` checks every file of those splits (headers only: corrupt images, masks of the
    wrong size, anomalous images with empty masks) and raises one ``DatasetError`` listing every problem.
    With ``check_splits`` set (the CLI sets every split its command will use) ``setup`` does so itself,
    before anything trains; otherwise listing a split opens no file and a bad one fails when it is read.
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
        cache: str = "auto",
    ) -> None:
        super().__init__()
        resolve_cache_mode(cache, "train")  # an unknown mode fails here, before any data is read
        _require_positive("batch_size", batch_size)
        if eval_batch_size is not None:
            _require_positive("eval_batch_size", eval_batch_size)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise DatasetError(f"`num_workers` must be 0 (load in the main process) or more, got {num_workers!r}.")
        self.root = Path(root).expanduser()
        self.category = category
        self.image_size = as_hw(image_size)
        if self.image_size is not None and min(self.image_size) < 1:
            raise DatasetError(
                f"`image_size` must be positive (an int, [height, width], or null for native size), got {image_size!r}."
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.normalization = normalization
        self.interpolation = interpolation
        self.train_augmentations = list(train_augmentations or [])
        self.cache = cache
        self.train_dataset: AnomalyDataset | None = None
        self.val_dataset: AnomalyDataset | None = None
        self.test_dataset: AnomalyDataset | None = None
        #: Splits whose files ``setup`` checks, whatever the stage (``None``: none; the CLI sets them).
        self.check_splits: tuple[str, ...] | None = None
        self._files_checked: set[tuple] = set()
        self._setup_done: set[tuple] = set()

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
                raise DatasetError(f"No {self.DATASET_NAME} categories found under '{self.root}'.{self._root_hint()}")
            return available
        listed = [self.category] if isinstance(self.category, str) else list(self.category)
        if not listed:
            raise DatasetError("`category` is empty: give a name, a list of names, or 'all'.")
        wanted = list(dict.fromkeys(listed))  # a category listed twice would train and test every image twice
        if len(wanted) < len(listed):
            repeated = sorted({c for c in listed if listed.count(c) > 1})
            warnings.warn(f"`category` lists {', '.join(repeated)} more than once; each category is used once.",
                          DuplicateCategoryWarning, stacklevel=2)
            self.category = wanted if isinstance(self.category, list) else self.category
        missing = [c for c in wanted if c not in available]
        if missing:
            raise DatasetError(
                f"{self.DATASET_NAME} category {missing} not found under '{self.root}' "
                f"(check `category`). Available: {', '.join(available) or 'none'}.{self._root_hint()}"
            )
        return wanted

    def _root_hint(self) -> str:
        """When ``root`` is itself a category folder (one level too deep), the parent and category to use."""
        if any((self.root / marker).is_dir() for marker in CATEGORY_MARKERS):
            return (f" '{self.root}' looks like a category folder itself: use `root` '{self.root.parent}' "
                    f"with `category` {self.root.name}.")
        return ""

    def build_dataset(self, categories: Sequence[str], split: str) -> AnomalyDataset | None:
        samples = [s for c in categories for s in self.make_samples(c, split)]
        if not samples:
            return None
        augment = self.train_augmentations if split == "train" else ()
        transform = build_transform(self.normalization, augment)
        return AnomalyDataset(samples, transform, self.image_size, self.interpolation, split=split)

    def setup(self, stage: str | None = None) -> None:
        # The CLI sets up (and checks) the data before the Trainer starts, so errors come first; the
        # Trainer's own call for the same stage and configuration then has nothing left to do.
        key = (stage, str(self.root), repr(self.category), self.image_size, self.check_splits)
        if key in self._setup_done:
            return
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
        if self.check_splits is not None:
            self.check_files(self.check_splits)
        self._setup_done.add(key)

    def check_files(self, splits: Sequence[str]) -> None:
        """Check every file of ``splits`` once (headers, mask sizes, empty masks); one error lists every problem.

        A split's sample list is checked once, so ``fit`` followed by ``test`` reads nothing twice.
        """
        datasets, keys = {}, set()
        for split in splits:
            dataset = getattr(self, f"{split}_dataset", None)
            samples = getattr(dataset, "samples", None)
            key = (split, hash(tuple(samples))) if isinstance(samples, list) else (split, id(dataset))
            if dataset is not None and key not in self._files_checked:
                datasets[split] = dataset
                keys.add(key)
        if not datasets:
            return
        batch_sizes = {"train": self.batch_size, "val": self.eval_batch_size, "test": self.eval_batch_size}
        check_datasets(datasets, batch_sizes, where=f"{self.DATASET_NAME} under '{self.root}'")
        self._files_checked |= keys

    # ---- checkpoint: the input format the model was fitted on --------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint (Lightning stores it under the class name), so ``test`` can tell
        whether a model fitted at one ``image_size`` is evaluated at another."""
        size = self.image_size
        return {"anomaly_zoo_datamodule": f"{type(self).__module__}.{type(self).__qualname__}",
                "image_size": list(size) if size is not None else None,
                "normalization": self.normalization,
                "categories": list(getattr(self, "categories", []) or [])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the data configuration always comes from the command line / config."""

    # ---- loaders -------------------------------------------------------------------------------
    def _loader(self, dataset: AnomalyDataset | None, train: bool) -> DataLoader:
        if dataset is None:
            return []  # type: ignore[return-value]  # Lightning skips an empty loader list
        # Decoded once per setting, then read from a memory map (see data/image_cache.py; exact: augmentation
        # still runs per item). ``auto`` leaves alone what is read once: test, predict, single-pass fits.
        read_once = train and self._single_pass_training() and self.cache == "auto"
        dataset = attach_image_cache(dataset, "off" if read_once else self.cache)
        if train and not self._single_pass_training():
            options = loader_options(self.num_workers, getattr(self, "trainer", None))
            # Seeded per epoch and stateful: a resumed run continues with the same order, mid-epoch too.
            return resumable_train_loader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                **options,
                drop_last=len(dataset) > self.batch_size,
                collate_fn=collate_samples,
            )
        # Evaluation, and the training pass of statistics-only models: every image once, unpadded shards.
        sampler = eval_sampler(dataset)
        workers = self.num_workers if train else evaluation_workers(
            self.num_workers, len(sampler) if sampler is not None else len(dataset), self.eval_batch_size)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=workers,
            **loader_options(workers, getattr(self, "trainer", None)),
            collate_fn=collate_samples,
        )

    def _single_pass_training(self) -> bool:
        """The model fits statistics in one pass (``single_pass_training``): no shuffle, no dropped batch."""
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        return bool(getattr(module, "single_pass_training", False))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)


def _require_positive(option: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DatasetError(f"`{option}` must be a positive integer, got {value!r}.")
