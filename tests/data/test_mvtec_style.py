"""MVTec AD, MPDD and BTAD: the MVTec-style layouts read with one shared parser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_zoo.data.btad import BTAD
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.mpdd import MPDD
from anomaly_zoo.data.mvtec_ad import MVTecAD
from tests.data.layouts import (
    MVTEC_DEFECTS,
    SIZE,
    expected_mask,
    make_btad,
    make_mvtec,
    one_batch,
    stem_index,
    write_mask,
)


def datamodule(cls, root, **kwargs):
    kwargs = {"image_size": None, "batch_size": 2, "num_workers": 0, **kwargs}
    return cls(root=root, **kwargs)


def check_masks(dataset) -> None:
    """Every anomalous item carries its own box (matched by stem), every normal item an empty mask."""
    for i in range(len(dataset)):
        item = dataset[i]
        mask = item["mask"][0].numpy()
        if item["label"] == 1:
            np.testing.assert_array_equal(mask, expected_mask(stem_index(item["path"])))
        else:
            assert mask.sum() == 0


def test_mvtec_counts_labels_and_masks(tmp_path):
    dm = datamodule(MVTecAD, make_mvtec(tmp_path), category="bottle")
    dm.setup()
    n_anomalous = sum(MVTEC_DEFECTS.values())
    assert len(dm.train_dataset) == 3
    assert dm.val_dataset is None
    assert len(dm.test_dataset) == 2 + n_anomalous
    train_labels = [s.label for s in dm.train_dataset.samples]
    test_labels = [s.label for s in dm.test_dataset.samples]
    assert train_labels == [0, 0, 0]
    assert sorted(test_labels) == [0, 0] + [1] * n_anomalous
    assert {s.defect_type for s in dm.test_dataset.samples} == {"good", *MVTEC_DEFECTS}
    for sample in dm.test_dataset.samples:
        assert bool(sample.mask_paths) == (sample.label == 1)
        if sample.label:
            assert sample.mask_paths[0].endswith(f"{stem_index(sample.image_path):03d}_mask.png")
    check_masks(dm.test_dataset)


def test_batch_contract_through_dataloader(tmp_path):
    dm = datamodule(MVTecAD, make_mvtec(tmp_path), category="bottle", image_size=(24, 32), batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "label", "category", "path", "index"}
    assert batch["image"].shape == (2, 3, 24, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 1, 24, 32) and batch["mask"].dtype == torch.uint8
    assert batch["label"].dtype == torch.long and batch["index"].dtype == torch.long
    assert batch["category"] == ["bottle", "bottle"] and len(batch["path"]) == 2

    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    n = len(dm.test_dataset)
    assert batch["image"].shape == (n, 3, 24, 32)
    assert batch["mask"].shape == (n, 1, 24, 32)
    assert set(batch["mask"].unique().tolist()) == {0, 1}
    assert batch["index"].tolist() == list(range(n))
    assert batch["label"].tolist() == [s.label for s in dm.test_dataset.samples]
    # normal images have all-zero masks, anomalous ones some defect pixels
    per_image = batch["mask"].flatten(1).sum(1)
    assert ((per_image > 0).long() == batch["label"]).all()


def test_eval_loader_keeps_order_and_eval_batch_size(tmp_path):
    dm = datamodule(MVTecAD, make_mvtec(tmp_path), category="bottle", eval_batch_size=4)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert [len(b["path"]) for b in batches] == [4, 1]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(5))


def test_category_all_and_list(tmp_path):
    root = make_mvtec(tmp_path, categories=("cable", "bottle"))
    (root / "notes").mkdir()  # a folder that is not a category (no train/test) is not offered
    dm = datamodule(MVTecAD, root, category="all")
    dm.setup()
    assert dm.categories == ["bottle", "cable"]  # CATEGORIES order
    assert len(dm.train_dataset) == 6
    assert dm.train_dataset.categories == ["bottle", "cable"]
    batch = one_batch(dm.test_dataset)
    assert batch["category"].count("bottle") == batch["category"].count("cable") == 5

    dm = datamodule(MVTecAD, root, category=["cable"])
    dm.setup()
    assert dm.test_dataset.categories == ["cable"] and len(dm.train_dataset) == 3


def test_missing_root_names_the_path(tmp_path):
    dm = datamodule(MVTecAD, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="nowhere") as err:
        dm.setup()
    assert "root" in str(err.value)


def test_unknown_category_lists_available(tmp_path):
    dm = datamodule(MVTecAD, make_mvtec(tmp_path), category=["bottle", "screw"])
    with pytest.raises(DatasetError) as err:
        dm.setup()
    message = str(err.value)
    assert "screw" in message and "bottle, cable" in message and "category" in message


def test_anomalous_image_without_mask_is_an_error(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",))
    (root / "bottle/ground_truth/crack/001_mask.png").unlink()
    dm = datamodule(MVTecAD, root, category="bottle")
    with pytest.raises(DatasetError) as err:
        dm.setup("test")
    message = str(err.value)
    assert str(root / "bottle/test/crack/001.png") in message
    assert str(root / "bottle/ground_truth/crack/001_mask.png") in message


def test_mask_without_image_is_ignored(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",))
    write_mask(root / "bottle/ground_truth/crack/077_mask.png", (slice(0, 2), slice(0, 2)))
    dm = datamodule(MVTecAD, root, category="bottle")
    dm.setup("test")
    assert len(dm.test_dataset) == 5


def test_masks_are_not_paired_by_position(tmp_path):
    """A renamed mask (wrong stem) must not silently shift onto the next image."""
    root = make_mvtec(tmp_path, categories=("bottle",), defects={"crack": 2})
    (root / "bottle/ground_truth/crack/000_mask.png").rename(root / "bottle/ground_truth/crack/009_mask.png")
    with pytest.raises(DatasetError, match="000.png"):
        datamodule(MVTecAD, root, category="bottle").setup("test")


def test_empty_train_split_is_an_error(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",))
    for path in (root / "bottle/train/good").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="train/good") as err:
        datamodule(MVTecAD, root, category="bottle").setup("fit")
    assert "empty" in str(err.value)


def test_missing_test_folder_is_an_error(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",))
    for path in sorted((root / "bottle/test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(DatasetError, match="bottle/test"):
        datamodule(MVTecAD, root, category="bottle").setup("test")


def test_mpdd_accepts_both_mask_names(tmp_path):
    root = make_mvtec(tmp_path, categories=("tubes",), defects={"anomalous": 2}, mask_suffix="")
    make_mvtec(tmp_path, categories=("connector",), defects={"parallel_behind": 2}, mask_suffix="_mask")
    dm = datamodule(MPDD, root, category="all")
    dm.setup()
    assert dm.categories == ["connector", "tubes"]
    assert len(dm.test_dataset) == 2 * (2 + 2)
    check_masks(dm.test_dataset)


def test_mvtec_ad_wants_the_mask_suffix(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",), mask_suffix="")
    with pytest.raises(DatasetError, match="_mask"):
        datamodule(MVTecAD, root, category="bottle").setup("test")


def test_btad_raw_extensions(tmp_path):
    root = make_btad(tmp_path)
    dm = datamodule(BTAD, root, category="all")
    dm.setup()
    assert dm.categories == ["01", "02", "03"]
    assert len(dm.train_dataset) == 9 and len(dm.test_dataset) == 3 * (2 + 2)
    by_category = {c: [s for s in dm.test_dataset.samples if s.category == c] for c in dm.categories}
    suffixes = {
        c: {(s.image_path[-4:], s.mask_paths[0][-4:]) for s in v if s.label} for c, v in by_category.items()
    }
    assert suffixes == {"01": {(".bmp", ".png")}, "02": {(".png", ".png")}, "03": {(".bmp", ".bmp")}}
    assert {s.defect_type for s in dm.test_dataset.samples} == {"ok", "ko"}
    check_masks(dm.test_dataset)
    # nothing was converted or added on disk
    assert sorted(p.name for p in (root / "01/test/ko").iterdir()) == ["000.bmp", "001.bmp"]
    assert sorted(p.name for p in (root / "01/ground_truth/ko").iterdir()) == ["000.png", "001.png"]


def test_btad_missing_mask_names_expected_file(tmp_path):
    root = make_btad(tmp_path)
    (root / "03/ground_truth/ko/001.bmp").unlink()
    with pytest.raises(DatasetError, match=r"03/test/ko/001\.bmp") as err:
        datamodule(BTAD, root, category="03").setup("test")
    assert "ground_truth/ko/001" in str(err.value)


def test_native_size_when_image_size_is_none(tmp_path):
    dm = datamodule(MVTecAD, make_mvtec(tmp_path, categories=("bottle",)), category="bottle")
    dm.setup("fit")
    assert dm.train_dataset[0]["image"].shape == (3, SIZE, SIZE)
