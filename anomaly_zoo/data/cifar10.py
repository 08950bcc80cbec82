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
The archive is never modified: the images a protocol uses are written once as lossless PNGs into the cache
(``$ANOMALY_ZOO_CACHE``, see :func:`export_images`) and read from there like any other dataset's files.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.synthetic import cache_dir
from anomaly_zoo.data.transforms import ImageSize
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


def export_images(images: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> dict[int, Path]:
    """Rows of ``classes`` in one batch file's ``images`` as PNG files: ``{row: path}`` (written once, reused).

    The archive stays as shipped; its images are written losslessly into the cache
    (``<cache>/cifar10/<hash of the batch's pixels>/<class>/<row>.png``) so that CIFAR-10 takes the same
    path as every other dataset: one :class:`Sample` per image file, read by :class:`AnomalyDataset`, and
    ``predict`` draws its heat-map overlays on the image. Each class folder is written to a temporary
    sibling and renamed in one step, so concurrent processes (DDP ranks) never see half of it.
    """
    base = cache_dir() / "cifar10" / hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()[:16]
    paths: dict[int, Path] = {}
    for cls in classes:
        rows = np.flatnonzero(labels == cls)
        target = base / CIFAR10_CLASSES[cls]
        if not target.is_dir():
            tmp = base / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                for row in rows:
                    # zlib effort 1: 32-px images, writing time matters more than bytes
                    Image.fromarray(images[row]).save(tmp / f"{row:05d}.png", compress_level=1)
                try:
                    os.rename(tmp, target)
                except OSError:
                    if not target.is_dir():
                        raise  # only a concurrent writer that finished first is fine
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        paths.update({int(row): target / f"{row:05d}.png" for row in rows})
    return paths


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
        batch_size, eval_batch_size, num_workers, normalization, interpolation, train_augmentations, cache:
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
        cache: str = "auto",
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

    def make_samples(self, category: str, split: str) -> list[Sample]:
        """Training: the normal classes' training images. Test: the normal classes' test images, then the
        anomalous ones (with ``balance_test``, a seeded sample as large as the normal part). No ``val``."""
        if split == "val":
            return []  # no validation split: the last epoch's model is the one tested
        archive = self.root / ARCHIVE_DIR
        files = TRAIN_FILES if split == "train" else (TEST_FILE,)
        batches = {name: read_batch(archive / name) for name in files}
        rows = [(name, row) for name in files for row in range(len(batches[name][1]))]
        labels = np.concatenate([batches[name][1] for name in files])
        normal = np.isin(labels, self.normal_classes)
        if not normal.any():
            raise DatasetError(
                f"No images of the normal classes {self.normal_classes} in {', '.join(files)} under '{archive}'."
            )
        keep = np.flatnonzero(normal)
        if split == "test":
            anomalous = np.flatnonzero(~normal)
            if self.balance_test and len(anomalous) > normal.sum():
                rng = np.random.default_rng(self.seed)
                anomalous = np.sort(rng.choice(anomalous, size=int(normal.sum()), replace=False))
            keep = np.concatenate([keep, anomalous])
        paths = {
            name: export_images(*batches[name], sorted({int(labels[i]) for i in keep if rows[i][0] == name}))
            for name in files
        }
        # semantic anomalies carry an image-level label only ("unlabelled": all-zero mask)
        return [
            Sample(str(paths[rows[i][0]][rows[i][1]]), 0 if normal[i] else 1, category, (),
                   "good" if normal[i] else "unlabelled")
            for i in keep
        ]  # fmt: skip
