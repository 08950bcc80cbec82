"""The generic folder layout (normal / abnormal / mask directories), as used for medical sets."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.folder import Folder
from tests.data.layouts import expected_mask, make_folder, one_batch, stem_index

DIRS = {"normal_dir": "train/good", "abnormal_dir": "test/Ungood/img", "mask_dir": "test/Ungood/label"}


def folder(root, **kwargs):
    return Folder(root, **{"image_size": None, "num_workers": 0, "category": "brain", **DIRS, **kwargs})


def test_with_normal_test_dir(tmp_path):
    dm = folder(make_folder(tmp_path), normal_test_dir="test/good")
    dm.setup()
    assert dm.categories == ["brain"] and dm.val_dataset is None
    assert len(dm.train_dataset) == 10 and len(dm.test_dataset) == 2 + 3
    batch = one_batch(dm.test_dataset)
    assert batch["image"].shape[1] == 3  # grayscale became 3 channels
    assert set(batch["category"]) == {"brain"}
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        if label:  # both '<stem>.png' and '<stem>_mask.png' were matched to the right image
            np.testing.assert_array_equal(mask[0].numpy(), expected_mask(stem_index(path)))
        else:
            assert mask.sum() == 0


def test_seeded_normal_split(tmp_path):
    root = make_folder(tmp_path)
    splits = []
    for _ in range(2):
        dm = folder(root, normal_split_ratio=0.3, seed=7)
        dm.setup()
        train = {s.image_path for s in dm.train_dataset.samples}
        normal_test = {s.image_path for s in dm.test_dataset.samples if s.label == 0}
        assert len(train) == 7 and len(normal_test) == 3 and not train & normal_test
        splits.append(normal_test)
    assert splits[0] == splits[1]
    other = folder(root, normal_split_ratio=0.3, seed=8)
    other.setup()
    assert {s.image_path for s in other.test_dataset.samples if s.label == 0} != splits[0]


def test_absolute_paths_without_root(tmp_path):
    root = make_folder(tmp_path)
    dm = Folder(
        normal_dir=root / "train/good", abnormal_dir=str(root / "test/Ungood/img"),
        mask_dir=root / "test/Ungood/label", normal_test_dir=root / "test/good", image_size=8, num_workers=0,
    )  # fmt: skip
    dm.setup()
    assert dm.categories == ["folder"] and len(dm.test_dataset) == 5
    assert one_batch(dm.test_dataset)["image"].shape == (5, 3, 8, 8)


def test_without_masks_images_are_image_level_labelled(tmp_path):
    dm = folder(make_folder(tmp_path), mask_dir=None)
    dm.setup("test")
    anomalous = [s for s in dm.test_dataset.samples if s.label]
    assert len(anomalous) == 3 and {s.defect_type for s in anomalous} == {"unlabelled"}
    assert one_batch(dm.test_dataset)["mask"].sum() == 0


def test_missing_mask_is_an_error(tmp_path):
    root = make_folder(tmp_path)
    (root / "test/Ungood/label/a001_mask.png").unlink()
    with pytest.raises(DatasetError) as err:
        folder(root).setup("test")
    assert "a001.png" in str(err.value) and "mask_dir" in str(err.value)


@pytest.mark.parametrize("option", ["normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir"])
def test_missing_directory_names_the_option(tmp_path, option):
    root = make_folder(tmp_path)
    with pytest.raises(DatasetError, match=option) as err:
        folder(root, **{"normal_test_dir": "test/good", option: "no/such/dir"}).setup()
    assert "no/such/dir" in str(err.value)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="root"):
        folder(tmp_path / "gone").setup()


def test_bad_options(tmp_path):
    with pytest.raises(DatasetError, match="category"):
        folder(tmp_path, category=["a", "b"])
    with pytest.raises(DatasetError, match="normal_split_ratio"):
        folder(tmp_path, normal_split_ratio=1.5)
    with pytest.raises(DatasetError, match="abnormal_dir"):
        folder(tmp_path, abnormal_dir=None)  # mask_dir without abnormal_dir


def test_empty_normal_dir(tmp_path):
    (tmp_path / "train/good").mkdir(parents=True)
    (tmp_path / "train/good/.DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetError, match="normal_dir"):
        folder(tmp_path).setup()
