"""CIFAR-10 as a *semantic* anomaly detection benchmark (UniAD's CIFAR-10 experiments).

Some classes are normal, all the others anomalous. Two protocols, both selected with ``category``:

- one-class: one normal class, the other nine anomalous (``category: cat`` or ``category: "3"``), one
  model per class as in the classic one-vs-rest benchmark;
- unified many-vs-rest (the UniAD paper): several normal classes learned by ONE model, e.g. ``"01234"``
  (the paper's splits are 01234, 56789, 02468 and 13579).

Reads the standard python archive as the publisher ships it, unpacked under ``root``::

    <root>/cifar-10-batches-py/data_batch_1 … data_batch_5   training images (normal classes used)
    <root>/cifar-10-batches-py/test_batch                     test images
    (from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)

Training uses the normal classes' training images. The test set is every test image of the normal classes
plus, with ``balance_test`` (the authors' protocol), an equally large random (seeded) sample of the other
classes' test images — otherwise all of them. Labels are image-level only: every mask is all zeros, so the
pixel metrics (P-AUROC, P-AP, P-F1max, AUPRO) are undefined for this dataset; read the image metrics.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.transforms import ImageSize, build_transform, resize_pair
from anomaly_zoo.registry import DATAMODULES

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
ARCHIVE_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"

# The archive is a pickle; only numpy arrays and plain containers may come out of it.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' from a CIFAR-10 batch file")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file → (N, 32, 32, 3) uint8 images and (N,) int64 labels."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as err:
        raise DatasetError(f"CIFAR-10 batch file '{path}' is missing (check `root`).") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DatasetError(f"'{path}' is not a CIFAR-10 python batch file: {err}") from err
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or "labels" not in entry:
        raise DatasetError(f"'{path}' has no 'data'/'labels' entries (keys: {sorted(entry)}).")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"'{path}' holds data of shape {data.shape} with {len(labels)} labels; expected (N, 3072).")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def parse_normal_classes(category: str | int | Sequence[str | int]) -> list[int]:
    """``"cat"``, ``"3"``, ``3``, ``"01234"`` (one digit per class) or a list of those → sorted class indices."""
    items = [category] if isinstance(category, (str, int)) else list(category)
    indices: set[int] = set()
    for item in items:
        text = str(item).strip()
        if text in CIFAR10_CLASSES:
            indices.add(CIFAR10_CLASSES.index(text))
        elif text.isdigit():
            indices.update(int(ch) for ch in text)
        else:
            raise DatasetError(
                f"Unknown CIFAR-10 class '{item}' in `category`. Use class names ({', '.join(CIFAR10_CLASSES)}), "
                "indices 0-9, or a digit string such as '01234' (the normal classes)."
            )
    if not indices:
        raise DatasetError("`category` names no normal CIFAR-10 class.")
    if len(indices) == len(CIFAR10_CLASSES):
        raise DatasetError("`category` makes all ten CIFAR-10 classes normal: nothing would be anomalous.")
    return sorted(indices)


class ArrayDataset(Dataset):
    """In-memory images → Batch-contract dicts (all-zero masks: image-level labels only)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        paths: Sequence[str],
        category: str,
        image_size: tuple[int, int] | None,
        interpolation: str,
        normalization: str,
        augmentations: Sequence[str] = (),
    ) -> None:
        self.images = images
        self.labels = labels
        self.paths = list(paths)
        self.category = category
        self.image_size = image_size
        self.interpolation = interpolation
        self.transform = build_transform(normalization, augmentations)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def categories(self) -> list[str]:
        return [self.category]

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        mask = np.zeros(image.shape[:2], dtype=bool)
        image, mask = resize_pair(image, mask, self.image_size, self.interpolation)
        out = self.transform(image=np.ascontiguousarray(image), mask=mask.astype(np.uint8))
        return {
            "image": out["image"].float(),
            "mask": torch.zeros((1, *out["image"].shape[-2:]), dtype=torch.uint8),
            "label": torch.tensor(int(self.labels[index]), dtype=torch.long),
            "category": self.category,
            "path": self.paths[index],
            "index": torch.tensor(index, dtype=torch.long),
        }


@DATAMODULES.register("cifar10")
class CIFAR10(AnomalyDataModule):
    """CIFAR-10 semantic anomaly detection: ``category`` names the NORMAL class(es), the rest are anomalous.

    Args:
        root: directory holding ``cifar-10-batches-py/``.
        category: normal classes — a name (``"cat"``), an index (``"3"``), a digit string (``"01234"``, the
            UniAD paper's unified setting) or a list of names/indices.
        balance_test: sample as many anomalous test images as there are normal ones (the authors' protocol,
            seeded by ``seed``); ``false`` keeps every anomalous test image.
        seed: seed of that sample.
        image_size: images are upsampled from 32 px (the authors: 224, PIL Lanczos — ``interpolation``).
        batch_size, eval_batch_size, num_workers, normalization, interpolation, train_augmentations:
            as in :class:`~anomaly_zoo.data.base.AnomalyDataModule`.

    Pixel metrics are undefined here (all masks are zero): read I-AUROC / I-AP / I-F1max.
    """

    CATEGORIES = CIFAR10_CLASSES
    DATASET_NAME = "CIFAR-10"

    def __init__(
        self,
        root: str | Path,
        category: str | list[str] = "01234",
        balance_test: bool = True,
        seed: int = 0,
        image_size: ImageSize = 224,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        normalization: str = "imagenet",
        interpolation: str = "lanczos",
        train_augmentations: list[str] | None = None,
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
        )
        self.normal_classes = parse_normal_classes(category)
        self.balance_test = balance_test
        self.seed = seed

    @property
    def group_name(self) -> str:
        """The category label of every sample (results are reported for this one group)."""
        return "normal_" + "".join(str(i) for i in self.normal_classes)

    def check_root(self) -> None:
        archive = self.root / ARCHIVE_DIR
        missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (archive / name).is_file()]
        if missing:
            raise DatasetError(
                f"CIFAR-10 python archive not found under '{self.root}' (check `root`): missing "
                f"{', '.join(str(archive / m) for m in missing)}. Download "
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it into `root`."
            )

    def available_categories(self) -> list[str]:
        return list(CIFAR10_CLASSES)

    def resolve_categories(self) -> list[str]:
        self.check_root()
        return [self.group_name]

    def _dataset(self, files: Sequence[str], train: bool) -> ArrayDataset:
        archive = self.root / ARCHIVE_DIR
        images, labels, paths = [], [], []
        for name in files:
            data, targets = read_batch(archive / name)
            images.append(data)
            labels.append(targets)
            paths += [f"{archive / name}#{i}" for i in range(len(data))]
        data, targets, paths_arr = np.concatenate(images), np.concatenate(labels), np.asarray(paths)
        normal = np.isin(targets, self.normal_classes)
        if train:
            keep = np.flatnonzero(normal)
        else:
            anomalous = np.flatnonzero(~normal)
            if self.balance_test and len(anomalous) > normal.sum():
                rng = np.random.default_rng(self.seed)
                anomalous = np.sort(rng.choice(anomalous, size=int(normal.sum()), replace=False))
            keep = np.concatenate([np.flatnonzero(normal), anomalous])
        if not normal.any():
            raise DatasetError(
                f"No images of the normal classes {self.normal_classes} in {', '.join(files)} under '{archive}'."
            )
        return ArrayDataset(
            data[keep],
            (~normal[keep]).astype(np.int64),
            paths_arr[keep].tolist(),
            self.group_name,
            self.image_size,
            self.interpolation,
            self.normalization,
            self.train_augmentations if train else (),
        )

    def setup(self, stage: str | None = None) -> None:
        self.categories = self.resolve_categories()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(TRAIN_FILES, train=True)
        self.val_dataset = None  # no validation split: the last epoch's model is the one tested
        if stage in (None, "test", "predict", "validate", "fit") and self.test_dataset is None:
            self.test_dataset = self._dataset((TEST_FILE,), train=False)
