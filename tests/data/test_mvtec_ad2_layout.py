"""MVTec AD 2: test_public with masks, private splits predict-only, validation split."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.data.domain import dataset_domain
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.mvtec_ad2 import MVTecAD2
from tests.data.layouts import expected_mask, make_mvtec_ad2, one_batch, stem_index


def ad2(root, **kwargs):
    return MVTecAD2(root, **{"image_size": None, "num_workers": 0, **kwargs})


def test_public_split_labels_and_masks(tmp_path):
    dm = ad2(make_mvtec_ad2(tmp_path))
    dm.setup()
    assert dm.categories == ["can", "vial"]  # readme.txt at the root is no category
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 4 and len(dm.test_dataset) == 8
    assert all("/validation/good/" in s.image_path for s in dm.val_dataset.samples)
    batch = one_batch(dm.test_dataset)
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        assert ("/bad/" in path) == bool(label)
        expected = expected_mask(stem_index(path)) if label else np.zeros_like(expected_mask(0))
        np.testing.assert_array_equal(mask[0].numpy(), expected)  # 000_regular ↔ 000_regular_mask
    assert dataset_domain(dm) == "industrial"


@pytest.mark.parametrize("split", ["test_private", "test_private_mixed"])
def test_private_splits_predict_but_refuse_test(tmp_path, split):
    dm = ad2(make_mvtec_ad2(tmp_path, categories=("can",)), test_split=split)
    with pytest.raises(DatasetError, match=f"'{split}' ships without ground truth") as err:
        dm.setup("test")
    assert "predict" in str(err.value) and "test_public" in str(err.value)
    dm.setup("predict")
    batch = one_batch(dm.test_dataset)
    assert len(batch["path"]) == 2 and all(f"/{split}/" in p for p in batch["path"])
    assert batch["label"].tolist() == [-1, -1] and batch["mask"].sum() == 0


def test_missing_mask_and_bad_option(tmp_path):
    root = make_mvtec_ad2(tmp_path, categories=("can",))
    (root / "can/test_public/ground_truth/bad/001_regular_mask.png").unlink()
    with pytest.raises(DatasetError, match="001_regular_mask.png"):
        ad2(root).setup("test")
    with pytest.raises(DatasetError, match="test_split"):
        ad2(root, test_split="private")
