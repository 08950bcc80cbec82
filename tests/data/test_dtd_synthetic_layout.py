"""DTD-Synthetic: MVTec layout with a bad/ folder and <stem>_mask.png masks, case-sensitive categories."""

from __future__ import annotations

import numpy as np

from anomaly_zoo.data.dtd_synthetic import DTDSynthetic
from tests.data.layouts import expected_mask, make_mvtec, one_batch, stem_index


def test_textures_and_masks(tmp_path):
    root = make_mvtec(tmp_path, categories=("Woven_001", "Blotchy_099"), defects={"bad": 2})
    dm = DTDSynthetic(root, image_size=None, num_workers=0)
    dm.setup()
    assert dm.categories == ["Blotchy_099", "Woven_001"]  # publisher order
    assert len(dm.train_dataset) == 6 and len(dm.test_dataset) == 8
    batch = one_batch(dm.test_dataset)
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        if label:
            np.testing.assert_array_equal(mask[0].numpy(), expected_mask(stem_index(path)))
