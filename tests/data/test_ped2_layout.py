"""UCSD Ped2: Train/TestNNN clips of .tif frames, TestNNN_gt/*.bmp masks, frame labels from masks."""

from __future__ import annotations

import pytest

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.ped2 import Ped2
from tests.data.layouts import box, make_mvtec, make_ped2, one_batch


def ped2(root, **kwargs):
    return Ped2(root, **{"image_size": None, "num_workers": 0, **kwargs})


def test_frames_labels_and_masks(tmp_path):
    dm = ped2(make_ped2(tmp_path))
    dm.setup()
    assert dm.categories == ["pedestrian"]
    assert len(dm.train_dataset) == 6  # the ._001.tif AppleDouble files are skipped
    assert len(dm.test_dataset) == 6 and {s.defect_type for s in dm.test_dataset.samples} == {
        "Test001",
        "Test002",
    }
    batch = one_batch(dm.test_dataset)
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        frame = int(path.rsplit("/", 1)[1][:3])
        assert int(label) == (frame >= 2)  # label from the mask: frame 1 has an empty mask
        assert int(mask.sum()) == (16 if frame >= 2 else 0)
        if frame >= 2:
            assert mask[0][box(frame)].all()
    assert not any("_gt" in s.image_path for s in dm.test_dataset.samples)


def test_missing_gt_frame(tmp_path):
    root = make_ped2(tmp_path)
    (root / "Test/Test002_gt/003.bmp").unlink()
    with pytest.raises(DatasetError, match="Test002/003.tif"):
        ped2(root).setup("test")


def test_anomalymoe_mvtec_layout_copy(tmp_path):
    root = make_mvtec(tmp_path, categories=("pedestrian",), defects={"bad": 2}, mask_suffix="")
    dm = ped2(root)
    dm.setup()
    assert len(dm.train_dataset) == 3 and sorted(s.label for s in dm.test_dataset.samples) == [0, 0, 1, 1]
