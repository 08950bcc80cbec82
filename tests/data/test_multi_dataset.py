"""The generalist protocol: one model on the union of several DataModules, reported per dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from jsonargparse import ArgumentParser

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.multi_dataset import MultiDataset, dataset_summary, split_results_by_dataset
from anomaly_zoo.data.mvtec_ad import MVTecAD
from anomaly_zoo.data.mvtec_loco import MVTecLOCO
from anomaly_zoo.data.visa import VisA
from anomaly_zoo.metrics import AnomalyMetrics
from anomaly_zoo.models.base import AnomalyModule
from tests.data.layouts import make_loco, make_mvtec, make_visa

COMMON = {"image_size": 16, "num_workers": 0}


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    return {"mvtec_ad": make_mvtec(tmp_path / "mvtec"), "visa": make_visa(tmp_path / "visa"),
            "mvtec_loco": make_loco(tmp_path / "loco")}


def _union(roots, **kwargs) -> MultiDataset:
    return MultiDataset([MVTecAD(roots["mvtec_ad"], **COMMON), VisA(roots["visa"], **COMMON),
                         MVTecLOCO(roots["mvtec_loco"], **COMMON)], **kwargs)


def test_training_union_is_every_image_once_per_epoch(roots):
    data = _union(roots, batch_size=3)
    data.setup("fit")
    members = data.datasets.values()
    expected = Counter(s.image_path for m in members for s in m.train_dataset.samples)
    assert len(data.train_dataset) == sum(len(m.train_dataset) for m in members) == sum(expected.values())
    seen = Counter(p for batch in data.train_dataloader() for p in batch["path"])
    # drop_last may cut the last partial batch: every image at most once, all but < batch_size seen
    assert max(seen.values()) == 1 and set(seen) <= set(expected)
    assert len(expected) - len(seen) < 3
    assert data.categories == ["mvtec_ad/bottle", "mvtec_ad/cable", "visa/candle", "visa/pcb1",
                               "mvtec_loco/breakfast_box", "mvtec_loco/pushpins"]


def test_same_named_categories_of_two_datasets_are_never_mixed(tmp_path):
    first, second = make_mvtec(tmp_path / "first"), make_mvtec(tmp_path / "second")
    data = MultiDataset({"first": MVTecAD(first, category="bottle", **COMMON),
                         "second": MVTecAD(second, category="bottle", **COMMON)}, batch_size=2)
    data.setup("test")
    assert data.test_dataset.categories == ["first/bottle", "second/bottle"]
    metrics = AnomalyMetrics(data.test_dataset.categories, pixel_mode="exact")
    for batch in data.test_dataloader():
        for category, path in zip(batch["category"], batch["path"]):
            assert Path(path).is_relative_to(first if category == "first/bottle" else second)
        # Perfect scores on the first dataset, inverted on the second: a mixed "bottle" row would be ~50 %.
        sign = torch.tensor([1.0 if c == "first/bottle" else -1.0 for c in batch["category"]])
        score = sign * (batch["label"].float() - 0.5)
        maps = score.view(-1, 1, 1, 1) * torch.ones_like(batch["mask"], dtype=torch.float)
        metrics.update({"pred_score": score, "anomaly_map": maps + batch["mask"] * sign.view(-1, 1, 1, 1)}, batch)
    table = metrics.compute()
    tables = split_results_by_dataset(table)
    assert list(tables) == ["first", "second"]
    assert tables["first"].loc["bottle", "I-AUROC"] == pytest.approx(100.0)
    assert tables["second"].loc["bottle", "I-AUROC"] == pytest.approx(0.0)
    assert list(tables["first"].index) == ["bottle", "mean"]


def test_per_dataset_tables_and_summary_by_hand():
    table = pd.DataFrame(
        {"I-AUROC": [90.0, 70.0, 60.0, np.nan], "P-AUROC": [80.0, 60.0, 50.0, np.nan]},
        index=["mvtec_ad/bottle", "mvtec_ad/cable", "visa/candle", "mean"],
    )
    table.loc["mean"] = table.drop(index="mean").mean()
    tables = split_results_by_dataset(table)
    assert tables["mvtec_ad"].loc["mean", "I-AUROC"] == pytest.approx(80.0)
    assert tables["visa"].loc["mean", "P-AUROC"] == pytest.approx(50.0)
    assert list(tables["mvtec_ad"].index) == ["bottle", "cable", "mean"]
    summary = dataset_summary(table)
    assert list(summary.index) == ["mvtec_ad", "visa", "mean"]
    assert summary.loc["mean", "I-AUROC"] == pytest.approx(220 / 3)  # over categories, not datasets
    with pytest.raises(ValueError, match="not a multi_dataset table"):
        split_results_by_dataset(pd.DataFrame({"I-AUROC": [1.0]}, index=["bottle"]))


def test_mismatched_input_format_and_ambiguous_names_are_rejected(roots):
    with pytest.raises(DatasetError, match="image_size"):
        MultiDataset([MVTecAD(roots["mvtec_ad"], image_size=16), VisA(roots["visa"], image_size=32)])
    with pytest.raises(DatasetError, match="mapping form"):
        MultiDataset([MVTecAD(roots["mvtec_ad"], **COMMON), MVTecAD(roots["mvtec_ad"], **COMMON)])
    with pytest.raises(DatasetError, match="contain no '/'"):
        MultiDataset({"a/b": MVTecAD(roots["mvtec_ad"], **COMMON)})


def _instantiate(parser, config):
    return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(config)  # renamed in 4.49


def test_built_from_yaml_with_nested_datamodules(roots, tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(f"""
data:
  class_path: anomaly_zoo.data.multi_dataset.MultiDataset
  init_args:
    batch_size: 2
    datasets:
      mvtec_ad:
        class_path: anomaly_zoo.data.mvtec_ad.MVTecAD
        init_args: {{root: {roots['mvtec_ad']}, image_size: 16, category: bottle}}
      loco:
        class_path: anomaly_zoo.data.mvtec_loco.MVTecLOCO
        init_args: {{root: {roots['mvtec_loco']}, image_size: 16}}
""")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_subclass_arguments(AnomalyDataModule, "data")
    data = _instantiate(parser, parser.parse_args(["--config", str(config)])).data
    assert isinstance(data, MultiDataset) and isinstance(data.datasets["loco"], MVTecLOCO)
    data.setup("test")
    assert data.categories == ["mvtec_ad/bottle", "loco/breakfast_box", "loco/pushpins"]


def test_built_from_command_line_list(roots):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnomalyDataModule, "data")
    datasets = (f"[{{class_path: anomaly_zoo.data.mvtec_ad.MVTecAD, init_args: {{root: {roots['mvtec_ad']}, "
                f"image_size: 16}}}}, {{class_path: anomaly_zoo.data.visa.VisA, init_args: {{root: {roots['visa']}, "
                "image_size: 16}}]")
    config = parser.parse_args(["--data", "anomaly_zoo.data.multi_dataset.MultiDataset", "--data.datasets", datasets])
    data = _instantiate(parser, config).data
    assert list(data.datasets) == ["mvtec_ad", "visa"]


class _RecordingModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tested: list[tuple[int, str]] = []

    def training_step(self, batch, batch_idx):
        return (batch["image"].mean() * self.weight).square()

    def test_step(self, batch, batch_idx):
        self.tested += list(zip(batch["index"].tolist(), batch["category"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_and_test_through_the_union(roots):
    data = _union(roots, batch_size=2)
    model = _RecordingModel()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == len(data.train_dataset) // 2
    trainer.test(model, datamodule=data, verbose=False)
    indices = sorted(i for i, _ in model.tested)
    assert indices == list(range(len(data.test_dataset)))
    assert {c.split("/")[0] for _, c in model.tested} == {"mvtec_ad", "visa", "mvtec_loco"}


class _MeanBrightness(AnomalyModule):
    def predict_anomaly(self, images):
        maps = images.mean(1, keepdim=True)
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}


def test_test_run_writes_one_table_per_dataset_and_their_summary(roots, tmp_path):
    model = _MeanBrightness(pixel_metrics="exact", results_dir=str(tmp_path))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(model, datamodule=_union(roots, batch_size=2), verbose=False)
    overall = model.results["test"]
    summary = pd.read_csv(tmp_path / "test_results_datasets.csv", index_col=0)
    assert list(summary.index) == ["mvtec_ad", "visa", "mvtec_loco", "mean"]
    for name in ("mvtec_ad", "visa", "mvtec_loco"):
        part = pd.read_csv(tmp_path / f"test_results_{name}.csv", index_col=0)
        rows = [r for r in overall.index if r.startswith(f"{name}/")]
        assert list(part.index[:-1]) == [r.split("/", 1)[1] for r in rows]
        np.testing.assert_allclose(part.loc["mean", "I-AUROC"], overall.loc[rows, "I-AUROC"].mean(), rtol=1e-3)
        np.testing.assert_allclose(summary.loc[name, "P-AUROC"], part.loc["mean", "P-AUROC"], rtol=1e-3)
    np.testing.assert_allclose(summary.loc["mean", "mAD"], overall.loc["mean", "mAD"], rtol=1e-3)
    assert "Dataset: visa." in (tmp_path / "test_results_visa.md").read_text()
