"""VisA from the raw ``Data/`` folders and the official ``split_csv/1cls.csv``."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.visa import VisA
from tests.data.layouts import expected_mask, make_visa, one_batch, stem_index


def visa(root, **kwargs):
    return VisA(root, **{"image_size": None, "num_workers": 0, "batch_size": 2, **kwargs})


def test_counts_labels_and_binarised_masks(tmp_path):
    dm = visa(make_visa(tmp_path), category="candle")
    dm.setup()
    assert len(dm.train_dataset) == 3 and dm.val_dataset is None and len(dm.test_dataset) == 4
    assert [s.label for s in dm.train_dataset.samples] == [0, 0, 0]
    assert sorted(s.label for s in dm.test_dataset.samples) == [0, 0, 1, 1]
    assert all("Data/Images/Normal" in s.image_path for s in dm.train_dataset.samples)
    batch = one_batch(dm.test_dataset)
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        if label:  # masks stored as 0/1 come out 0/1 and in the right place
            np.testing.assert_array_equal(mask[0].numpy(), expected_mask(stem_index(path)))
        else:
            assert mask.sum() == 0
    assert set(batch["category"]) == {"candle"}


def test_nothing_is_written_under_root(tmp_path):
    root = make_visa(tmp_path)
    before = sorted(root.rglob("*"))
    dm = visa(root)
    dm.setup()
    one_batch(dm.test_dataset)
    assert sorted(root.rglob("*")) == before


def test_category_all_uses_the_split_file_and_existing_folders(tmp_path):
    root = make_visa(tmp_path, categories=("pcb1", "candle", "fryum"))
    for path in sorted((root / "fryum").rglob("*"), reverse=True):  # listed in the csv, not extracted
        path.unlink() if path.is_file() else path.rmdir()
    (root / "fryum").rmdir()
    dm = visa(root, category="all")
    dm.setup()
    assert dm.categories == ["candle", "pcb1"]
    assert len(dm.train_dataset) == 6 and len(dm.test_dataset) == 8
    with pytest.raises(DatasetError, match="fryum") as err:
        visa(root, category="fryum").setup()
    assert "candle, pcb1" in str(err.value)


def test_missing_split_file_is_a_clear_error(tmp_path):
    root = make_visa(tmp_path)
    (root / "split_csv/1cls.csv").unlink()
    with pytest.raises(DatasetError, match="split_csv/1cls.csv") as err:
        visa(root).setup()
    assert "split_file" in str(err.value)


def test_custom_split_file(tmp_path):
    root = make_visa(tmp_path)
    rows = list(csv.reader(open(root / "split_csv/1cls.csv")))
    with open(tmp_path / "mine.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *[r for r in rows[1:] if r[0] == "pcb1"]])
    dm = visa(root, split_file=tmp_path / "mine.csv")
    dm.setup()
    assert dm.categories == ["pcb1"]


def test_split_file_with_wrong_columns(tmp_path):
    root = make_visa(tmp_path)
    (root / "split_csv/1cls.csv").write_text("object,split,image\ncandle,train,candle/x.JPG\n")
    with pytest.raises(DatasetError, match="label") as err:
        visa(root).setup()
    assert "1cls.csv" in str(err.value)


def test_anomalous_image_without_mask(tmp_path):
    root = make_visa(tmp_path, categories=("candle",))
    (root / "candle/Data/Masks/Anomaly/001.png").unlink()
    with pytest.raises(DatasetError) as err:
        visa(root).setup("test")
    assert "candle/Data/Images/Anomaly/001.JPG" in str(err.value)
    assert "candle/Data/Masks/Anomaly/001.png" in str(err.value)


def test_image_listed_but_absent(tmp_path):
    root = make_visa(tmp_path, categories=("candle",))
    (root / "candle/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(DatasetError, match="0001.JPG"):
        visa(root).setup("fit")
