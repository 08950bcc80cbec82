"""The CIFAR-10 semantic anomaly detection DataModule, on a tiny fake archive in the publisher's format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_zoo.data.cifar10 import CIFAR10, CIFAR10_CLASSES, parse_normal_classes, read_batch
from anomaly_zoo.data.dataset import AnomalyDataset
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import read_image
from anomaly_zoo.registry import DATAMODULES

from .layouts import make_cifar10

PER_CLASS_TRAIN = 3  # per batch file → 15 per class in the training set
PER_CLASS_TEST = 4


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = make_cifar10(tmp_path_factory.mktemp("cifar"), PER_CLASS_TRAIN, PER_CLASS_TEST)
    with open(root / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    return root


def test_registered():
    assert DATAMODULES["cifar10"] is CIFAR10


@pytest.mark.parametrize("category,expected", [
    ("cat", [3]), ("3", [3]), ("01234", [0, 1, 2, 3, 4]), (["ship", "1"], [1, 8]), ("13579", [1, 3, 5, 7, 9]),
])
def test_normal_classes(category, expected):
    assert parse_normal_classes(category) == expected


@pytest.mark.parametrize("category,message", [("horse-ish", "Unknown CIFAR-10 class"), ("0123456789", "all ten")])
def test_bad_normal_classes(category, message):
    with pytest.raises(DatasetError, match=message):
        parse_normal_classes(category)


def test_read_batch(cifar_root):
    images, labels = read_batch(cifar_root / "cifar-10-batches-py" / "test_batch")
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert (images[:, :, :, 0] == (labels * 20)[:, None, None]).all()  # HWC, red plane first in the file


def _classes_read(dataset) -> list[int]:
    """The class of every sample, read back from its image file's red plane (see ``layouts.write_cifar_batch``)."""
    return [int(read_image(s.image_path)[0, 0, 0]) // 20 for s in dataset.samples]


def _labels(dataset) -> np.ndarray:
    return np.array([s.label for s in dataset.samples])


def test_unified_many_vs_rest(cifar_root):
    dm = CIFAR10(root=str(cifar_root), category="01234", image_size=64, batch_size=4, num_workers=0, seed=0)
    dm.setup("fit")
    train, test = dm.train_dataset, dm.test_dataset
    # the shared path: the base's AnomalyDataset over one Sample per real image file
    assert type(train) is AnomalyDataset and type(test) is AnomalyDataset
    assert all(Path(s.image_path).is_file() for s in train.samples + test.samples)
    assert len(train) == 5 * 5 * PER_CLASS_TRAIN and (_labels(train) == 0).all()
    assert set(_classes_read(train)) == {0, 1, 2, 3, 4}
    # balanced test set: every normal test image plus as many anomalies (the authors' protocol)
    labels = _labels(test)
    assert (labels == 0).sum() == 5 * PER_CLASS_TEST and (labels == 1).sum() == 5 * PER_CLASS_TEST
    red = np.array(_classes_read(test))
    assert set(red[labels == 0]) <= {0, 1, 2, 3, 4} and set(red[labels == 1]) <= {5, 6, 7, 8, 9}
    item = test[len(test) - 1]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and item["mask"].dtype == torch.uint8 and item["mask"].sum() == 0
    assert item["label"] == 1 and item["category"] == "normal_01234" and item["index"] == len(test) - 1
    assert test.categories == ["normal_01234"] and dm.val_dataset is None
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["label"].shape == (4,)


def test_exported_images_equal_the_archive(cifar_root):
    """The cached PNGs hold exactly the archive's pixels, row by row."""
    dm = CIFAR10(root=str(cifar_root), category="3", image_size=None, num_workers=0, balance_test=False)
    dm.setup("test")
    images, _ = read_batch(cifar_root / "cifar-10-batches-py" / "test_batch")
    for sample in dm.test_dataset.samples:
        np.testing.assert_array_equal(read_image(sample.image_path), images[int(Path(sample.image_path).stem)])


def test_one_class_protocol_and_unbalanced_test(cifar_root):
    dm = CIFAR10(root=str(cifar_root), category="cat", image_size=32, num_workers=0, balance_test=False)
    dm.setup("test")
    labels = _labels(dm.test_dataset)
    assert (labels == 0).sum() == PER_CLASS_TEST and (labels == 1).sum() == 9 * PER_CLASS_TEST
    dm.setup("fit")
    assert len(dm.train_dataset) == 5 * PER_CLASS_TRAIN


def test_balanced_sample_is_seeded(cifar_root):
    def anomalies(seed):
        dm = CIFAR10(root=str(cifar_root), category="3", image_size=32, num_workers=0, seed=seed)
        dm.setup("test")
        return [s.image_path for s in dm.test_dataset.samples if s.label == 1]

    assert anomalies(0) == anomalies(0)
    assert anomalies(0) != anomalies(1)


def test_missing_archive_is_explained(tmp_path):
    dm = CIFAR10(root=str(tmp_path), num_workers=0)
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        dm.setup("fit")


def test_refuses_foreign_pickles(tmp_path):
    archive = tmp_path / "cifar-10-batches-py"
    archive.mkdir()
    with open(archive / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "evil": Path("/")}, f)
    with pytest.raises(DatasetError, match="refusing"):
        read_batch(archive / "test_batch")
