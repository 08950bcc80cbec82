"""RSDDs: Type-I / Type-II folders with spaces, JPEG masks thresholded at 127."""

from __future__ import annotations

import numpy as np

from anomaly_zoo.data.rsdd import RSDD
from tests.data.layouts import expected_mask, make_mvtec, make_rsdd, one_batch, stem_index


def test_both_rail_types_and_masks(tmp_path):
    dm = RSDD(make_rsdd(tmp_path), image_size=None, num_workers=0)
    dm.setup("test")
    assert dm.categories == ["type_i", "type_ii"]
    batch = one_batch(dm.test_dataset)
    assert batch["label"].tolist() == [1] * 4 and set(batch["category"]) == {"type_i", "type_ii"}
    for path, mask in zip(batch["path"], batch["mask"]):
        assert "/Rail surface images/" in path
        np.testing.assert_array_equal(mask[0].numpy(), expected_mask(stem_index(path)))


def test_zero_shot_copy_in_mvtec_layout(tmp_path):
    # MoECLIP's RSDD: Metal15/test/{good,anomaly}/*.bmp, ground_truth/anomaly/<stem>.png
    root = make_mvtec(
        tmp_path, categories=("Metal15",), n_train=0, defects={"anomaly": 2}, mask_suffix="", image_ext=".bmp"
    )
    dm = RSDD(root, image_size=None, num_workers=0)
    dm.setup("test")
    assert dm.categories == ["Metal15"]
    batch = one_batch(dm.test_dataset)
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1]
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        if label:
            np.testing.assert_array_equal(mask[0].numpy(), expected_mask(stem_index(path)))
