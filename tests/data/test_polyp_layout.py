"""Polyp sets: PraNet images/masks, Kvasir-SEG .jpg masks, the original ClinicDB TIFFs; masks > 127."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.polyp import Polyp
from tests.data.layouts import expected_mask, make_polyp, one_batch


def polyp(root, **kwargs):
    return Polyp(root, **{"image_size": None, "num_workers": 0, **kwargs})


def test_every_layout_with_thresholded_masks(tmp_path):
    dm = polyp(make_polyp(tmp_path))
    dm.setup("test")
    assert dm.categories == ["CVC-ClinicDB", "CVC-ColonDB", "Kvasir-SEG"]
    batch = one_batch(dm.test_dataset)
    assert batch["label"].tolist() == [1] * 8
    for path, mask in zip(batch["path"], batch["mask"]):
        if "Kvasir-SEG" in path:
            index = 0 if "cju0qkwl" in path else 1
        else:
            index = int(path.rsplit("/", 1)[1].split(".")[0])
        # the faint noise (1..60) around the box is not polyp: exactly the box remains
        np.testing.assert_array_equal(mask[0].numpy(), expected_mask(index))
    assert any(p.endswith("Original/1.tif") for p in batch["path"])


def test_no_training_split_and_missing_mask(tmp_path):
    root = make_polyp(tmp_path)
    with pytest.raises(DatasetError, match="No training images"):
        polyp(root, category="CVC-ColonDB").setup("fit")
    (root / "CVC-ColonDB/masks/2.png").unlink()
    with pytest.raises(DatasetError, match="CVC-ColonDB/images/2.png"):
        polyp(root, category="CVC-ColonDB").setup("test")


def test_moeclip_endo_copy_with_space_and_jpeg_masks(tmp_path):
    from tests.data.layouts import write_image, write_noisy_mask

    for i in range(2):
        write_image(tmp_path / "Endo" / "test dataset" / "images" / f"00{i}ab.jpg", seed=i)
        write_noisy_mask(tmp_path / "Endo" / "test dataset" / "masks" / f"00{i}ab.jpg", i, fmt="PNG")
    dm = polyp(tmp_path)
    dm.setup("test")
    assert dm.categories == ["Endo"]
    batch = one_batch(dm.test_dataset)
    for path, mask in zip(batch["path"], batch["mask"]):
        np.testing.assert_array_equal(mask[0].numpy(), expected_mask(int(path.rsplit("/", 1)[1][2])))
