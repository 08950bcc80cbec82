"""MVTec 3D-AD: rgb/ + gt/ per defect folder, optional xyz point maps as a batch key."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.mvtec_3d import MVTec3D
from tests.data.layouts import expected_mask, make_mvtec, make_mvtec_3d, one_batch, stem_index


def m3d(root, **kwargs):
    return MVTec3D(root, **{"image_size": None, "num_workers": 0, **kwargs})


def test_rgb_masks_and_splits(tmp_path):
    dm = m3d(make_mvtec_3d(tmp_path))
    dm.setup()
    assert dm.categories == ["bagel"]
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 2 and len(dm.test_dataset) == 4
    assert all("/rgb/" in s.image_path for s in dm.test_dataset.samples)
    batch = one_batch(dm.test_dataset)
    assert "xyz" not in batch
    for path, label, mask in zip(batch["path"], batch["label"], batch["mask"]):
        assert bool(label) == ("/crack/" in path)
        expected = expected_mask(stem_index(path)) if label else 0 * expected_mask(0)
        np.testing.assert_array_equal(mask[0].numpy(), expected)  # good images' all-zero gt stays normal


def test_xyz_key_native_and_resized(tmp_path):
    root = make_mvtec_3d(tmp_path)
    dm = m3d(root, load_xyz=True)
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    path = batch["path"][0]
    xyz = tifffile.imread(path.replace("/rgb/", "/xyz/").replace(".png", ".tiff"))
    assert batch["xyz"].shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(batch["xyz"][0].numpy(), xyz.transpose(2, 0, 1))  # no value changed
    small = m3d(root, load_xyz=True, image_size=8)
    small.setup("test")
    resized = one_batch(small.test_dataset)["xyz"][0]
    assert resized.shape == (3, 8, 8)
    values = set(map(tuple, xyz.reshape(-1, 3).tolist()))
    got = set(map(tuple, resized.numpy().transpose(1, 2, 0).reshape(-1, 3).tolist()))
    assert got <= values  # nearest: every point is a real point, no blend with the 0 = missing row


def test_missing_xyz_is_an_error(tmp_path):
    root = make_mvtec_3d(tmp_path)
    (root / "bagel/test/crack/xyz/001.tiff").unlink()
    with pytest.raises(DatasetError, match="crack/rgb/001.png"):
        m3d(root, load_xyz=True).setup("test")
    m3d(root).setup("test")  # without the option the point maps are not needed


def test_rgb_only_copy_in_mvtec_layout(tmp_path):
    root = make_mvtec(tmp_path, categories=("bagel",))
    dm = m3d(root)
    dm.setup()
    assert len(dm.train_dataset) == 3 and len(dm.test_dataset) == 5
    with pytest.raises(DatasetError, match="RGB-only copy"):
        m3d(root, load_xyz=True).setup("test")
