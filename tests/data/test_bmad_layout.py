"""BMAD: {train,valid,test}/{good,Ungood}/{img,label}, masks by file name, medical domain."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.data.bmad import BMAD
from anomaly_zoo.data.domain import dataset_domain
from anomaly_zoo.data.errors import DatasetError
from tests.data.layouts import expected_mask, make_bmad, one_batch, stem_index


def bmad(root, **kwargs):
    return BMAD(root, **{"image_size": None, "num_workers": 0, **kwargs})


def test_splits_masks_and_domain(tmp_path):
    dm = bmad(make_bmad(tmp_path))
    dm.setup()
    assert dm.categories == ["Brain", "RESC"] and dataset_domain(dm) == "medical"
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 8 and len(dm.test_dataset) == 8
    assert {s.label for s in dm.val_dataset.samples} == {0, 1}  # BMAD's valid split has anomalies
    batch = one_batch(dm.test_dataset)
    assert batch["image"].shape[1] == 3  # grey slices become 3-channel
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        assert bool(label) == ("/Ungood/img/" in path)
        if label:
            np.testing.assert_array_equal(mask[0].numpy(), expected_mask(int(stem_index(path) // 100)))


def test_missing_label_and_image_level_sets(tmp_path):
    root = make_bmad(tmp_path, sets=("Brain",))
    (root / "Brain/test/Ungood/label/00001_70.png").unlink()
    with pytest.raises(DatasetError, match="Ungood/img/00001_70.png"):
        bmad(root).setup("test")
    flat = tmp_path / "flat"  # image-level sets: no img/ level, no masks
    for split in ("train/good", "test/good", "test/Ungood"):
        from tests.data.layouts import write_image

        write_image(flat / "camelyon16" / split / "1000.png")
    dm = bmad(flat)
    dm.setup("test")
    assert sorted(s.defect_type for s in dm.test_dataset.samples) == ["good", "unlabelled"]


def test_mvfa_copies_anomaly_mask_folder_and_no_train(tmp_path):
    dm = bmad(make_bmad(tmp_path, sets=("Liver_AD",), mask_dir="anomaly_mask", train=False))
    dm.setup("test")
    assert dm.categories == ["Liver_AD"] and len(dm.test_dataset) == 4
    assert sum(len(s.mask_paths) for s in dm.test_dataset.samples) == 2
    with pytest.raises(DatasetError, match="No training images"):
        bmad(tmp_path).setup("fit")


def test_anomalymoe_mvtec_layout_copy(tmp_path):
    from tests.data.layouts import make_mvtec

    root = make_mvtec(tmp_path, categories=("BrainMRI", "LiverCT"), defects={"Ungood": 2}, mask_suffix="")
    dm = bmad(root)
    dm.setup()
    assert dm.categories == ["BrainMRI", "LiverCT"] and len(dm.test_dataset) == 8
