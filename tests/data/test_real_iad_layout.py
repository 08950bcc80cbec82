"""Real-IAD: JSON split files (multi- and single-view), resolution folders, null masks."""

from __future__ import annotations

import json

import pytest

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.real_iad import RealIAD
from tests.data.layouts import make_real_iad, one_batch


def realiad(root, **kwargs):
    return RealIAD(root, **{"image_size": None, "num_workers": 0, "resolution": 256, **kwargs})


def test_multi_view_split_file(tmp_path):
    dm = realiad(make_real_iad(tmp_path))
    dm.setup()
    assert dm.categories == ["audiojack"]
    assert len(dm.train_dataset) == 2 and dm.val_dataset is None and len(dm.test_dataset) == 4
    by_type = sorted((s.label, s.defect_type, len(s.mask_paths)) for s in dm.test_dataset.samples)
    # normal sample 1 (2 views), NG sample 2: view C1 with mask, view C2 with a null mask (image label only)
    assert by_type == [(0, "good", 0), (0, "good", 0), (1, "AK", 1), (1, "unlabelled", 0)]
    batch = one_batch(dm.test_dataset)
    masked = [m for m, p in zip(batch["mask"], batch["path"]) if "_NG_C1_" in p]
    assert len(masked) == 1 and masked[0].sum() == 16


def test_single_view_split_file(tmp_path):
    dm = realiad(make_real_iad(tmp_path), split_dir="realiad_jsons/realiad_jsons_sv")
    dm.setup("test")
    assert all("_C1_" in s.image_path for s in dm.test_dataset.samples) and len(dm.test_dataset) == 2


def test_wrong_resolution_and_missing_files(tmp_path):
    root = make_real_iad(tmp_path)
    with pytest.raises(DatasetError, match="realiad_512") as err:
        realiad(root, resolution=512).setup("test")
    assert "realiad_256" in str(err.value)  # names what exists
    doc = json.loads((root / "realiad_jsons/realiad_jsons/audiojack.json").read_text())
    doc["test"][0]["image_path"] = "OK/S9999/missing.jpg"
    (root / "realiad_jsons/realiad_jsons/audiojack.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="S9999/missing.jpg"):
        realiad(root).setup("test")
