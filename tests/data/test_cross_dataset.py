"""The cross-dataset (zero-shot) protocol: fit on one DataModule's data, test on another's."""

from __future__ import annotations

import albumentations as A
import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.cross_dataset import CrossDataset
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.mvtec_ad import MVTecAD
from anomaly_zoo.data.mvtec_loco import MVTecLOCO
from anomaly_zoo.data.visa import VisA
from tests.data.layouts import make_loco, make_mvtec, make_visa

COMMON = {"image_size": 16, "num_workers": 0}


@pytest.fixture
def roots(tmp_path):
    return make_visa(tmp_path / "visa"), make_mvtec(tmp_path / "mvtec")


def test_zero_shot_fit_on_visa_test_split_then_test_on_mvtec(roots):
    visa_root, mvtec_root = roots
    data = CrossDataset(
        VisA(visa_root, batch_size=3, train_augmentations=["hflip"], **COMMON),
        MVTecAD(mvtec_root, eval_batch_size=4, **COMMON),
        train_split="test",
    )
    data.setup("fit")
    assert len(data.train_dataset) == 2 * 4  # VisA's labelled test split, both categories
    assert sorted({s.label for s in data.train_dataset.samples}) == [0, 1]
    assert data.train_dataset.categories == ["candle", "pcb1"]
    assert any(isinstance(t, A.HorizontalFlip) for t in data.train_dataset.transform.transforms)
    assert data.val_dataset is None
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["mask"].sum() >= 0

    data.setup("test")
    assert data.categories == ["bottle", "cable"]
    assert data.test_dataset.categories == ["bottle", "cable"] and len(data.test_dataset) == 10
    assert data.image_size == (16, 16)
    assert not any(isinstance(t, A.HorizontalFlip) for t in data.test_dataset.transform.transforms)
    assert [len(b["path"]) for b in data.test_dataloader()] == [4, 4, 2]
    assert len(list(data.predict_dataloader())) == 3


def test_unsupervised_fit_on_train_split_with_validation(tmp_path):
    data = CrossDataset(
        MVTecLOCO(make_loco(tmp_path / "loco"), category="pushpins", **COMMON),
        MVTecAD(make_mvtec(tmp_path / "mvtec"), category="bottle", **COMMON),
    )
    data.setup("fit")
    assert data.train_split == "train" and len(data.train_dataset) == 3
    assert {s.label for s in data.train_dataset.samples} == {0}
    assert len(data.val_dataset) == 2 and len(list(data.val_dataloader())) == 1
    assert data.train_categories == ["pushpins"] and data.categories == ["bottle"]


def test_mismatched_input_format_is_rejected(roots):
    visa_root, mvtec_root = roots
    with pytest.raises(DatasetError, match=r"train_data\.image_size"):
        CrossDataset(VisA(visa_root, image_size=32), MVTecAD(mvtec_root, image_size=16))
    with pytest.raises(DatasetError, match="normalization"):
        CrossDataset(VisA(visa_root, normalization="clip"), MVTecAD(mvtec_root))
    with pytest.raises(DatasetError, match="train_split"):
        CrossDataset(VisA(visa_root), MVTecAD(mvtec_root), train_split="val")


def test_wrong_test_root_fails_before_training(roots, tmp_path):
    visa_root, _ = roots
    data = CrossDataset(VisA(visa_root, **COMMON), MVTecAD(tmp_path / "missing", **COMMON))
    with pytest.raises(DatasetError, match="missing"):
        data.setup("fit")


def test_built_from_config_by_jsonargparse(roots):
    """The CLI builds both sides as class_path/init_args subclasses of AnomalyDataModule."""
    visa_root, mvtec_root = roots
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnomalyDataModule, "data")
    config = parser.parse_args([
        "--data", "anomaly_zoo.data.cross_dataset.CrossDataset",
        "--data.train_split", "test",
        "--data.train_data", "anomaly_zoo.data.visa.VisA",
        "--data.train_data.root", str(visa_root),
        "--data.train_data.category", "candle",
        "--data.train_data.image_size", "16",
        "--data.test_data", "anomaly_zoo.data.mvtec_ad.MVTecAD",
        "--data.test_data.root", str(mvtec_root),
        "--data.test_data.category", "[bottle, cable]",
        "--data.test_data.image_size", "16",
    ])  # fmt: skip
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    data = instantiate(config).data
    assert isinstance(data, CrossDataset) and isinstance(data.train_data, VisA)
    assert data.test_data.category == ["bottle", "cable"]
    data.setup()
    assert len(data.train_dataset) == 4 and len(data.test_dataset) == 10


class _TinyModel(pl.LightningModule):
    """Just enough of a model to run Lightning's loops over a DataModule."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        return (batch["image"].mean() * self.weight).square()

    def test_step(self, batch, batch_idx):
        self.seen += batch["index"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_and_test_through_the_cross_datamodule(roots):
    visa_root, mvtec_root = roots
    data = CrossDataset(
        VisA(visa_root, batch_size=2, **COMMON), MVTecAD(mvtec_root, **COMMON), train_split="test"
    )
    model = _TinyModel()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 4  # 8 images, batch 2
    trainer.test(model, datamodule=data, verbose=False)
    assert sorted(model.seen) == list(range(10))
