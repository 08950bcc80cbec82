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


# ---- per-category thresholds: a unified model scores each category on its own scale ------------------------
OFFSETS = {"A": 0.0, "B": 10.0}  # category B's scores (image and pixels) are A's + 10


def _category_items(category: str, shift: float = 0.0, anomalies: bool = True) -> list[dict]:
    """4 normals (0.1..0.4) and 4 anomalies (2×2 defect at 0.6..0.9 on 0.1), all + the category's offset + shift."""
    offset = OFFSETS[category] + shift
    items = [_item(v + offset, None, i, category) for i, v in enumerate((0.1, 0.2, 0.3, 0.4))]
    if anomalies:
        items += [_item(0.1 + offset, v + offset, 4 + i, category) for i, v in enumerate((0.6, 0.7, 0.8, 0.9))]
    return items


class TwoCategoryData(ToyData):
    """Categories A and B (B = A + 10) in every split; the test split optionally shifted further."""

    def __init__(self, test_shift: float = 0.0) -> None:
        super().__init__()
        self.train_dataset = ListDataset(_category_items("A", anomalies=False) + _category_items("B", anomalies=False))
        self.val_dataset = ListDataset(_category_items("A") + _category_items("B"))
        self.test_dataset = ListDataset(_category_items("A", test_shift) + _category_items("B", test_shift))


def test_per_category_thresholds_separate_shifted_categories_where_the_global_one_fails(tmp_path):
    model, trainer = _fit(TwoCategoryData(), tmp_path / "a")
    thresholds = model.thresholds
    assert thresholds.mode == "per-category" and set(thresholds.per_category) == {"A", "B"}  # auto: 2 qualify
    own_a, own_b = thresholds.per_category["A"], thresholds.per_category["B"]
    # Each category's F1-max threshold is its lowest anomalous score; its pixel one lies between its normal
    # pixels (≤ 0.4 + offset) and its defect pixels (≥ 0.6 + offset).
    assert own_a.image == pytest.approx(0.6, abs=1e-6) and own_b.image == pytest.approx(10.6, abs=1e-6)
    assert 0.4 < own_a.pixel <= 0.6 + 1e-6 and 10.4 < own_b.pixel <= 10.6 + 1e-6
    assert own_b.n_images == 8 and own_b.image_range == pytest.approx((10.1, 10.9), abs=1e-6)
    # Hand-worked global F1-max over both: at 0.6 TP 8, FP 4 (B's normals) -> F1 0.8; at 10.6 TP 4, FN 4 -> 0.67.
    assert thresholds.image == pytest.approx(0.6, abs=1e-6)
    assert "Per-category thresholds in use" in thresholds.describe() and "B" in thresholds.category_table()

    trainer.test(model, datamodule=TwoCategoryData())
    table = model.results["test"]
    for category in ("A", "B"):  # each category judged at its own thresholds: perfect
        assert table.loc[category, "I-F1"] == pytest.approx(100.0)
        assert table.loc[category, "P-F1"] == pytest.approx(100.0)
    assert "each category's own" in model.results_caption()

    # The same calibration with the switch off: the global threshold flags every B image (precision 50 %).
    glob, glob_trainer = _fit(TwoCategoryData(), tmp_path / "g", ThresholdOptions(per_category=False))
    assert glob.thresholds.mode == "global" and glob.thresholds.per_category == thresholds.per_category
    glob_trainer.test(glob, datamodule=TwoCategoryData())
    row = glob.results["test"].loc["B"]
    assert row["I-Precision"] == pytest.approx(50.0) and row["I-Recall"] == pytest.approx(100.0)
    assert "Global thresholds in use" in glob.results_caption()

    # A test set with shifted scores does not move the per-category thresholds.
    shifted, _ = _fit(TwoCategoryData(test_shift=5.0), tmp_path / "s")
    assert shifted.thresholds == thresholds


def test_auto_stays_global_when_only_one_category_has_enough_images(tmp_path):
    model, _ = _fit(TwoCategoryData(), tmp_path, ThresholdOptions(min_category_images=9))
    assert model.thresholds.per_category == {} and model.thresholds.mode == "global"
    model, _ = _fit(ToyData(), tmp_path / "one")  # a single category: its own thresholds stored, not used
    assert set(model.thresholds.per_category) == {"toy"} and model.thresholds.mode == "global"


def test_normalised_score_is_one_half_exactly_at_each_categorys_threshold(tmp_path):
    model, _ = _fit(TwoCategoryData(), tmp_path, ThresholdOptions(normalize=True))
    thresholds = model.thresholds
    chosen = [thresholds.per_category["A"], thresholds.per_category["B"], thresholds]  # "C": unknown -> global
    output = {"pred_score": torch.tensor([t.image for t in chosen], dtype=torch.float64),
              "anomaly_map": torch.stack([torch.full((1, 2, 2), t.pixel, dtype=torch.float64) for t in chosen])}
    decided = model.decide(output, ["A", "B", "C"])
    assert decided["pred_score"].tolist() == [0.5, 0.5, 0.5]
    assert bool((decided["anomaly_map"] == 0.5).all()) and decided["pred_label"].tolist() == [1, 1, 1]
    # Just below its own threshold B is normal, though far above the global one; hand value of the mapping:
    # (10.5 - 10.6) / (10.9 - 10.1) + 0.5 = 0.375.
    below = model.decide({"pred_score": torch.tensor([10.5], dtype=torch.float64),
                          "anomaly_map": torch.zeros(1, 1, 2, 2, dtype=torch.float64)}, ["B"])
    assert below["pred_label"].tolist() == [0] and float(below["pred_score"][0]) == pytest.approx(0.375, abs=1e-6)


def test_an_old_checkpoint_without_per_category_entries_loads_and_decides_globally(tmp_path):
    model, trainer = _fit(TwoCategoryData(), tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    old = checkpoint["anomaly_zoo"]["thresholds"]
    assert set(old["per_category"]) == {"A", "B"}  # saved beside the global ones
    for key in ("per_category", "per_category_active"):  # what checkpoints written before them hold
        del old[key]
    torch.save(checkpoint, path)
    loaded = ChannelOracle.load_from_checkpoint(path, weights_only=False)
    assert loaded.thresholds.per_category == {} and loaded.thresholds.mode == "global"
    assert loaded.thresholds.image == model.thresholds.image
    batch = collate_samples(_category_items("B", anomalies=False)[:1])  # a B normal (10.1) > global 0.6
    assert loaded.decide(loaded.anomaly_output(batch), batch["category"])["pred_label"].tolist() == [1]


def test_predict_csv_and_masks_use_the_known_categorys_threshold(tmp_path):
    import pandas as pd
    from PIL import Image

    model, _ = _fit(TwoCategoryData(), tmp_path / "fit")
    model.prediction_options = {"output_dir": str(tmp_path / "pred"), "heatmaps": False, "save_masks": True}
    items = [_item(10.3, None, 0, "B"), _item(10.1, 10.7, 1, "B"), _item(0.1, 0.7, 2, "A"), _item(0.3, None, 3, "C")]
    loader = DataLoader(ListDataset(items), batch_size=4, collate_fn=collate_samples)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    rows = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    # B's normal at 10.3 is below B's own 10.6 (the global 0.6 would flag it); C has no thresholds of its own.
    assert rows["pred_label"].tolist() == [0, 1, 1, 0]
    def flagged(name: str) -> int:
        return int((np.array(Image.open(tmp_path / "pred" / "masks" / name)) > 0).sum())

    # The predicted region at each category's pixel threshold: the 2×2 defect of A's anomaly (the global pixel
    # threshold, 10.5999, would outline nothing on A), nothing on B's normal, B's defect only.
    assert flagged("A/000002_2.png") == 4
    assert flagged("B/000000_0.png") == 0 and flagged("B/000001_1.png") == 4


def test_export_metadata_lists_each_categorys_threshold_in_the_graphs_unit(tmp_path):
    from anomaly_zoo.export.graph import InferenceGraph, export_metadata

    model, _ = _fit(TwoCategoryData(), tmp_path, ThresholdOptions(normalize=True))
    metadata = export_metadata(model, InferenceGraph(model), (1, 3, SIZE, SIZE))["thresholds"]
    assert metadata["mode"] == "per-category" and set(metadata["per_category"]) == {"A", "B"}
    # The graph normalises with the global threshold 0.6 and range (0.1, 10.9): B's 10.6 maps to
    # (10.6 - 0.6) / 10.8 + 0.5 = 1.43 -> clipped to 1.0, where every B score lands: not a usable decision.
    assert metadata["per_category"]["B"]["image"] == pytest.approx(1.0) and not metadata["per_category"]["B"]["exact"]
    assert metadata["per_category"]["B"]["raw_image"] == pytest.approx(10.6, abs=1e-6)
    # A's image threshold is the global one (-> 0.5), but the global pixel threshold (≈ 10.6, range 0.1..10.9)
    # maps A's ≈ 0.6 to (0.6 - 10.6) / 10.8 + 0.5 < 0 -> 0.0: not exact either.
    a = metadata["per_category"]["A"]
    assert a["image"] == pytest.approx(0.5) and a["pixel"] == 0.0 and not a["exact"]
    raw = export_metadata(model, InferenceGraph(model, normalize=False), (1, 3, SIZE, SIZE))["thresholds"]
    assert raw["per_category"]["B"]["image"] == pytest.approx(10.6, abs=1e-6) and raw["per_category"]["B"]["n_images"] == 8


def test_the_per_category_switch_is_a_cli_option():
    from anomaly_zoo.deploy_cli import prepare_deploy_arguments

    saved = AnomalyModule.threshold_options
    try:
        rest = prepare_deploy_arguments(["fit", "--threshold.per_category", "false", "--threshold.min_category_images=6"])
        assert rest == ["fit"]
        assert AnomalyModule.threshold_options.per_category is False
        assert AnomalyModule.threshold_options.min_category_images == 6
    finally:
        AnomalyModule.threshold_options = saved
