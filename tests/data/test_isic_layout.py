"""ISIC 2016: challenge folder names, <stem>_Segmentation.png masks, threshold at 127."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.data.domain import dataset_domain
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.isic import ISIC
from tests.data.layouts import expected_mask, make_isic, one_batch, stem_index


def test_images_and_segmentation_masks(tmp_path):
    dm = ISIC(make_isic(tmp_path), image_size=None, num_workers=0)
    dm.setup("test")
    assert dm.categories == ["isic2016"] and dataset_domain(dm) == "medical"
    batch = one_batch(dm.test_dataset)
    assert batch["label"].tolist() == [1, 1, 1]
    for path, mask in zip(batch["path"], batch["mask"]):
        np.testing.assert_array_equal(mask[0].numpy(), expected_mask(stem_index(path)))


def test_missing_segmentation(tmp_path):
    root = make_isic(tmp_path)
    (root / "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000001_Segmentation.png").unlink()
    with pytest.raises(DatasetError, match="ISIC_0000001_Segmentation.png"):
        ISIC(root, num_workers=0).setup("test")
