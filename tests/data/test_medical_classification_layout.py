"""HeadCT (labels.csv), Br35H and Brain MRI (yes/no folders): image labels, no masks, medical domain."""

from __future__ import annotations

import pytest

from anomaly_zoo.data.domain import dataset_domain
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.medical_classification import Br35H, BrainMRI, HeadCT
from tests.data.layouts import make_headct, make_yes_no, one_batch, write_image


def test_headct_labels_from_csv(tmp_path):
    dm = HeadCT(make_headct(tmp_path), image_size=None, num_workers=0)
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    labels = {p.rsplit("/", 1)[1]: int(v) for p, v in zip(batch["path"], batch["label"])}
    assert labels == {"000.png": 0, "001.png": 1, "002.png": 1, "003.png": 0, "004.png": 1}
    assert batch["mask"].sum() == 0 and dataset_domain(dm) == "medical"
    (tmp_path / "head_ct/head_ct/004.png").unlink()
    with pytest.raises(DatasetError, match="id 4: no image"):
        HeadCT(tmp_path, num_workers=0).setup("test")


def test_br35h_ignores_pred_folder(tmp_path):
    root = make_yes_no(tmp_path, yes=("y0.jpg", "y1.jpg"), no=("no0.jpg",))
    make_yes_no(tmp_path / "pred", yes=(), no=())
    dm = Br35H(root, image_size=None, num_workers=0)
    dm.setup("test")
    assert sorted(s.label for s in dm.test_dataset.samples) == [0, 1, 1]


def test_brain_mri_nested_copy_and_odd_names(tmp_path):
    names = ("Y1.jpg", "Y100.JPG", "Y7.png")
    root = make_yes_no(tmp_path, yes=names, no=("1 no.jpeg", "No12.jpg"), nested="brain_tumor_dataset")
    dm = BrainMRI(root, image_size=None, num_workers=0)
    dm.setup("test")
    assert len(dm.test_dataset) == 5 and sum(s.label for s in dm.test_dataset.samples) == 3
    assert one_batch(dm.test_dataset)["image"].shape[0] == 5
    with pytest.raises(DatasetError, match="No training images"):
        BrainMRI(root, num_workers=0).setup("fit")


def test_headct_zero_shot_copy(tmp_path):
    for i, folder in enumerate(("good", "defect", "defect")):
        write_image(tmp_path / "test" / folder / f"{i:03d}.png", mode="L", seed=i)
    dm = HeadCT(tmp_path, image_size=None, num_workers=0)
    dm.setup("test")
    assert sorted(s.label for s in dm.test_dataset.samples) == [0, 1, 1]


def test_domains_of_plain_and_composite_datamodules():
    from types import SimpleNamespace

    from anomaly_zoo.data.domain import category_domain
    from anomaly_zoo.data.mvtec_ad import MVTecAD
    from anomaly_zoo.data.polyp import Polyp

    assert dataset_domain(MVTecAD) == "industrial" and dataset_domain(Polyp) == "medical"
    assert dataset_domain(SimpleNamespace(test_data=HeadCT, train_data=MVTecAD)) == "medical"  # cross_dataset
    multi = SimpleNamespace(datasets={"mvtec_ad": MVTecAD, "isic": Polyp})
    assert category_domain(multi, "isic/isic2016") == "medical"
    assert category_domain(multi, "mvtec_ad/bottle") == "industrial"
    with pytest.raises(ValueError, match="DOMAIN"):
        dataset_domain(SimpleNamespace(DOMAIN="space"))
