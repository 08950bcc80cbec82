"""MVTec LOCO AD: validation split and several masks per test image, merged by union."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.mvtec_loco import MVTecLOCO
from tests.data.layouts import LOCO_DEFECTS, loco_union, make_loco, one_batch, stem_index


def loco(root, **kwargs):
    return MVTecLOCO(root, **{"image_size": None, "num_workers": 0, **kwargs})


def test_splits_and_counts(tmp_path):
    dm = loco(make_loco(tmp_path), category="breakfast_box")
    dm.setup()
    assert len(dm.train_dataset) == 3
    assert len(dm.val_dataset) == 2 and all(s.label == 0 for s in dm.val_dataset.samples)
    assert all("/validation/good/" in s.image_path for s in dm.val_dataset.samples)
    assert len(dm.test_dataset) == 2 + 2 * len(LOCO_DEFECTS)
    assert {s.defect_type for s in dm.test_dataset.samples} == {"good", *LOCO_DEFECTS}
    assert len(dm.val_dataloader()) == 1


def test_all_masks_of_an_image_are_merged(tmp_path):
    dm = loco(make_loco(tmp_path), category="all")
    dm.setup("test")
    assert dm.categories == ["breakfast_box", "pushpins"]
    by_path = {s.image_path: s for s in dm.test_dataset.samples}
    two_masks = [s for s in by_path.values() if len(s.mask_paths) == 2]
    assert two_masks and all(s.image_path.endswith("001.png") for s in two_masks)
    batch = one_batch(dm.test_dataset)
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        if label:
            union = loco_union(stem_index(path))
            np.testing.assert_array_equal(mask[0].numpy(), union)
        else:
            assert mask.sum() == 0
    # the union really is bigger than any single mask for images with two masks
    assert loco_union(1).sum() > loco_union(0).sum()


def test_masks_are_matched_by_folder_name(tmp_path):
    root = make_loco(tmp_path, categories=("pushpins",))
    gt = root / "pushpins/ground_truth/logical_anomalies"
    (gt / "001").rename(gt / "005")  # extra mask folder ignored, image 001 now lacks masks
    with pytest.raises(DatasetError) as err:
        loco(root).setup("test")
    assert "logical_anomalies/001.png" in str(err.value)
    assert "ground_truth/logical_anomalies/001" in str(err.value)


def test_empty_mask_folder_is_an_error(tmp_path):
    root = make_loco(tmp_path, categories=("pushpins",))
    folder = root / "pushpins/ground_truth/structural_anomalies/000"
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="structural_anomalies/000.png"):
        loco(root).setup("test")


def test_missing_validation_split_is_an_error(tmp_path):
    root = make_loco(tmp_path, categories=("pushpins",), n_val=0)
    with pytest.raises(DatasetError, match="validation/good"):
        loco(root).setup("fit")
