"""The shared evaluation loop: output contract checks, map resizing, plain dataloaders."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.base import AnomalyModule


class Oracle(AnomalyModule):
    """Scores each pixel by the image's own mask (read back from a side table) at half resolution."""

    def __init__(self, masks: dict[int, torch.Tensor], bad_shape: bool = False) -> None:
        super().__init__(pixel_metrics="exact")
        self.masks = masks
        self.bad_shape = bad_shape
        self._index = None

    def test_step(self, batch, batch_idx):
        self._index = batch["index"]
        return super().test_step(batch, batch_idx)

    def predict_anomaly(self, images):
        maps = torch.stack([self.masks[int(i)] for i in self._index]).float()
        maps = torch.nn.functional.avg_pool2d(maps, 2)  # half resolution: the base must upsample
        if self.bad_shape:
            return {"anomaly_map": maps[:, 0], "pred_score": maps.flatten(1).amax(1)}
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}


@pytest.fixture(scope="module")
def test_set():
    datamodule = SyntheticDataModule(category=["stripes", "assembly"], image_size=32, num_train=4, num_val=2,
                                     num_test=8)
    datamodule.setup("test")
    return datamodule.test_dataset


def _masks(dataset):
    return {i: dataset[i]["mask"] for i in range(len(dataset))}


def test_plain_dataloader_and_upsampled_oracle_maps_score_perfectly(test_set, tmp_path):
    model = Oracle(_masks(test_set))
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    model.results_dir = str(tmp_path)
    trainer.test(model, dataloaders=DataLoader(test_set, batch_size=4))
    table = model.results["test"]
    assert list(table.index) == ["stripes", "assembly", "mean"]
    assert table.loc["mean", "I-AUROC"] == pytest.approx(100.0)
    assert table.loc["mean", "P-AUROC"] > 99.0  # bilinear upsampling blurs the borders only
    assert (tmp_path / "test_results.csv").is_file() and (tmp_path / "test_results.md").is_file()


def test_a_map_without_the_channel_axis_is_rejected(test_set):
    model = Oracle(_masks(test_set), bad_shape=True)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match=r"expected \(4, 1, h, w\)"):
        trainer.test(model, dataloaders=DataLoader(test_set, batch_size=4))
