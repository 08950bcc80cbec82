"""Thresholds: calibrated after fit on validation data only, stored in checkpoints, applied at test and predict."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from anomaly_zoo.data.collate import collate_samples
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.components.thresholds import ThresholdOptions, Thresholds, normalize_scores

SIZE = 8


class ChannelOracle(AnomalyModule):
    """Map = the image's first channel, score = its max: every score is known by construction."""

    def __init__(self) -> None:
        super().__init__(pixel_metrics="exact")
        self.automatic_optimization = False
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # something to save

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return None

    def predict_anomaly(self, images):
        maps = images[:, :1]
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}


def _item(background: float, patch: float | None, index: int, category: str = "toy") -> dict:
    image = torch.full((3, SIZE, SIZE), background)
    mask = torch.zeros((1, SIZE, SIZE), dtype=torch.uint8)
    if patch is not None:
        image[:, 2:4, 2:4] = patch
        mask[:, 2:4, 2:4] = 1
    return {"image": image, "mask": mask, "label": torch.tensor(int(patch is not None)), "category": category,
            "path": f"{category}/{index}.png", "index": torch.tensor(index)}


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items
        self.categories = list(dict.fromkeys(i["category"] for i in items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class ToyData(pl.LightningDataModule):
    """Normals at 0.1..0.4 everywhere; anomalies: background 0.1 and a 2×2 defect at 0.6..0.9 (its mask)."""

    def __init__(self, test_shift: float = 0.0, with_val: bool = True, val_anomalies: bool = True) -> None:
        super().__init__()
        self.normalization = "none"
        self.image_size = (SIZE, SIZE)
        self.train_dataset = ListDataset([_item(0.1 * (i % 4 + 1), None, i) for i in range(8)])
        val = [_item(v, None, i) for i, v in enumerate((0.1, 0.2, 0.3, 0.4))]
        if val_anomalies:
            val += [_item(0.1, v, 4 + i) for i, v in enumerate((0.6, 0.7, 0.8, 0.9))]
        self.val_dataset = ListDataset(val) if with_val else None
        test = [_item(v + test_shift, None, i) for i, v in enumerate((0.1, 0.2, 0.3, 0.4))]
        test += [_item(0.1 + test_shift, v + test_shift, 4 + i) for i, v in enumerate((0.6, 0.7, 0.8, 0.9))]
        self.test_dataset = ListDataset(test)

    def _loader(self, dataset):
        return DataLoader(dataset, batch_size=4, collate_fn=collate_samples) if dataset is not None else []

    def train_dataloader(self):
        return self._loader(self.train_dataset)

    def val_dataloader(self):
        return self._loader(self.val_dataset)

    def test_dataloader(self):
        return self._loader(self.test_dataset)


def _fit(data: ToyData, tmp_path, options: ThresholdOptions | None = None) -> tuple[ChannelOracle, pl.Trainer]:
    model = ChannelOracle()
    if options is not None:
        model.threshold_options = options
    model.results_dir = str(tmp_path)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path), check_val_every_n_epoch=1)
    trainer.fit(model, datamodule=data)
    return model, trainer


def test_f1max_thresholds_come_from_validation_and_a_shifted_test_set_does_not_move_them(tmp_path):
    model, trainer = _fit(ToyData(test_shift=0.0), tmp_path / "a")
    thresholds = model.thresholds
    # Perfectly separated validation scores: the highest F1 = 1 threshold is the lowest anomalous score.
    assert thresholds.image == pytest.approx(0.6, abs=1e-6)
    assert thresholds.image_method == "F1-max" and "validation" in thresholds.source
    # Defect pixels are 0.6..0.9, normal pixels at most 0.4: F1 = 1 anywhere in (0.4, 0.6].
    assert 0.4 < thresholds.pixel <= 0.6 + 1e-6
    assert thresholds.image_range == pytest.approx((0.1, 0.9), abs=1e-6)

    shifted_model, shifted = _fit(ToyData(test_shift=10.0), tmp_path / "b")
    assert shifted_model.thresholds == thresholds  # the test set is never looked at
    shifted.test(shifted_model, datamodule=ToyData(test_shift=10.0))
    row = shifted_model.results["test"].loc["toy"]
    # Every shifted test image scores above 10 > 0.6: all flagged; half are anomalous.
    assert row["I-Precision"] == pytest.approx(50.0) and row["I-Recall"] == pytest.approx(100.0)
    assert row["P-Recall"] == pytest.approx(100.0)
    # ... while on the unshifted test set the stored thresholds are perfect.
    trainer.test(model, datamodule=ToyData(test_shift=0.0))
    row = model.results["test"].loc["toy"]
    assert row["I-F1"] == pytest.approx(100.0) and row["P-F1"] == pytest.approx(100.0)


def test_without_anomalies_the_normal_quantile_is_used(tmp_path):
    model, _ = _fit(ToyData(val_anomalies=False), tmp_path, ThresholdOptions(quantile=0.9))
    normal_scores = np.array([0.1, 0.2, 0.3, 0.4])
    assert model.thresholds.image == pytest.approx(np.quantile(normal_scores, 0.9), abs=1e-6)
    assert "quantile" in model.thresholds.image_method and "quantile" in model.thresholds.pixel_method
    # Pixel quantile from the histogram: each normal image is one constant, so the top 25 % of the pixels
    # tie at 0.4 and numpy's 0.9 quantile is 0.4; the histogram's answer is that value's bin edge.
    assert np.quantile(np.repeat(normal_scores, SIZE * SIZE), 0.9) == pytest.approx(0.4)
    assert 0.4 - 1e-3 < model.thresholds.pixel <= 0.4 + 1e-6


def test_without_a_validation_split_the_training_images_calibrate(tmp_path):
    model, _ = _fit(ToyData(with_val=False), tmp_path, ThresholdOptions(quantile=0.5))
    assert "training images" in model.thresholds.source
    train_scores = np.array([0.1 * (i % 4 + 1) for i in range(8)])
    assert model.thresholds.image == pytest.approx(np.quantile(train_scores, 0.5), abs=1e-6)


def test_f1max_without_anomalies_is_refused(tmp_path):
    with pytest.raises(ValueError, match="f1max"):
        _fit(ToyData(val_anomalies=False), tmp_path, ThresholdOptions(method="f1max"))


def test_normalised_score_is_one_half_exactly_at_the_threshold_and_keeps_decisions():
    thresholds = Thresholds(image=2.7, pixel=1.3, image_range=(1.0, 5.0), pixel_range=(0.0, 4.0),
                            image_method="F1-max", pixel_method="F1-max", source="test", n_images=4, normalize=True)
    assert float(thresholds.normalized_image(torch.tensor([2.7]))) == 0.5
    assert float(thresholds.normalized_map(torch.tensor([1.3]))) == 0.5
    assert normalize_scores(np.array([2.7]), 2.7, 1.0, 5.0)[0] == 0.5
    raw = torch.linspace(-10, 10, 2001)
    normalised = thresholds.normalized_image(raw)
    assert float(normalised.min()) == 0.0 and float(normalised.max()) == 1.0
    assert bool((torch.diff(normalised) >= 0).all())
    assert torch.equal(normalised >= 0.5, raw >= 2.7)  # the same decisions as the raw scores
    # Hand value: (3.7 - 2.7) / (5 - 1) + 0.5 = 0.75.
    assert float(thresholds.normalized_image(torch.tensor([3.7]))) == pytest.approx(0.75)


def test_thresholds_survive_the_checkpoint_and_drive_predict_decisions(tmp_path):
    model, trainer = _fit(ToyData(), tmp_path, ThresholdOptions(normalize=True))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = ChannelOracle.load_from_checkpoint(path, weights_only=False)
    assert loaded.thresholds == model.thresholds and loaded.thresholds.normalize
    assert loaded.preprocessing["image_size"] == [SIZE, SIZE]
    batch = collate_samples([_item(0.1, None, 0), _item(0.1, 0.59, 1), _item(0.1, 0.6, 2)])
    decided = loaded.decide(loaded.anomaly_output(batch))
    assert decided["pred_label"].tolist() == [0, 0, 1]
    assert float(decided["pred_score"][2]) == 0.5 and float(decided["raw_score"][2]) == pytest.approx(0.6)
