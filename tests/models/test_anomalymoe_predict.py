"""AnomalyMoE ``predict`` on new images: component masks from the k-means centres stored in the checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.images import ImageFiles
from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.anomalymoe import AnomalyMoE
from anomaly_zoo.models.anomalymoe.prepare_masks import stored_group_for

TINY = dict(
    backbone_kwargs={"embed_dim": 24, "depth": 12, "num_heads": 2, "img_size": 70}, pretrained=False,
    decoder_heads=2, router_hidden=16, global_ae_channels=(4, 4, 8), global_student_channels=(4, 8),
    global_input_size=56, component_hidden=16, component_inner=8, component_code=8, center_crop=0.875,
    warmup_iters=1,
)
CATEGORIES = ["grid", "assembly"]


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def _data(root: Path, category) -> SyntheticDataModule:
    return SyntheticDataModule(root=str(root), category=category, generated_size=64, num_train=6, num_val=0,
                               num_test=3, image_size=64, batch_size=4)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A 2-step fit on two synthetic categories, saved as a checkpoint (the training images stay elsewhere)."""
    base = tmp_path_factory.mktemp("amoe_predict")
    mask_settings = {"pretrained": False, "feature_model_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                     "image_size": 64, "coreset_ratio": 0.1, "progress": False, "cache_dir": str(base / "cache")}
    torch.manual_seed(0)
    model = AnomalyMoE(**TINY, mask_settings=mask_settings)
    data = _data(base / "data", CATEGORIES)
    trainer = _trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    ckpt = base / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"base": base, "ckpt": ckpt, "root": Path(data.root), "mask_settings": mask_settings}


@pytest.fixture
def seen(monkeypatch) -> dict:
    """path → (score, map, component masks) of every image any stage scored."""
    record: dict = {}
    original = AnomalyMoE.anomaly_output

    def spy(self, batch):
        out = original(self, batch)
        for i, path in enumerate(batch["path"]):
            record[str(Path(path).resolve())] = (float(out["pred_score"][i]), out["anomaly_map"][i].clone(),
                                                 batch["component_masks"][i].clone())
        return out

    monkeypatch.setattr(AnomalyMoE, "anomaly_output", spy)
    return record


def _test(fitted, category: str) -> None:
    model = AnomalyMoE(**TINY, mask_settings=fitted["mask_settings"])
    _trainer().test(model, datamodule=_data(fitted["root"], category), ckpt_path=str(fitted["ckpt"]),
                    verbose=False)


def _predict(fitted, paths, **kw) -> list[dict]:
    model = AnomalyMoE(**TINY, mask_settings=fitted["mask_settings"])
    data = ImageFiles(path=[str(p) for p in paths], image_size=64, batch_size=2, **kw)
    batches = _trainer().predict(model, datamodule=data, ckpt_path=str(fitted["ckpt"]))
    return [{k: b[k][i] for k in ("path", "pred_score", "anomaly_map", "category")}
            for b in batches for i in range(len(b["path"]))]


def test_checkpoint_stores_the_centres_of_every_trained_category(fitted):
    checkpoint = torch.load(fitted["ckpt"], map_location="cpu", weights_only=True)
    groups = checkpoint["anomalymoe_mask_centres"]["groups"]
    assert sorted(g["category"] for g in groups) == sorted(CATEGORIES)
    for g in groups:
        assert g["centres"].shape == (5, 32) and g["keep"].dtype == torch.bool and g["keep"].shape == (5,)


@pytest.mark.parametrize("category,count", [("grid", 1), ("assembly", 3)])
def test_predict_without_training_images_matches_test(fitted, tmp_path, monkeypatch, seen, category, count):
    _test(fitted, category)
    expected = dict(seen)
    # Copies of test images in a folder named after the category, no training images anywhere near.
    sources = sorted((fitted["root"] / category / "test").rglob("*.png"))
    sources = [p for p in sources if "ground_truth" not in p.parts][:count]
    folder = tmp_path / "new" / category
    folder.mkdir(parents=True)
    copies = []
    for i, src in enumerate(sources):
        copies.append(folder / f"{i}_{src.name}")
        shutil.copy(src, copies[-1])
    monkeypatch.setenv("ANOMALY_ZOO_CACHE", str(tmp_path / "cache"))
    rows = _predict(fitted, copies)
    assert len(rows) == count
    for src, copy, row in zip(sources, copies, rows):
        score, amap, masks = expected[str(src.resolve())]
        assert masks.any(), "the test image has no component mask: the comparison would not test them"
        assert torch.equal(seen[str(copy.resolve())][2], masks)  # the same masks as the test prepare step
        assert row["category"] == category
        assert float(row["pred_score"]) == pytest.approx(score, abs=1e-6)
        assert torch.allclose(row["anomaly_map"].squeeze(), amap.squeeze(), atol=1e-6)


def test_predict_category_rules(fitted, tmp_path):
    src = next(p for p in (fitted["root"] / "grid" / "test").rglob("*.png") if "ground_truth" not in p.parts)
    loose = tmp_path / "pics" / "x.png"
    loose.parent.mkdir()
    shutil.copy(src, loose)
    # Two stored categories, a folder named after neither, the default category: one clear error.
    with pytest.raises(DatasetError, match=r"--data.category NAME, one of assembly, grid "):
        _predict(fitted, [loose])
    rows = _predict(fitted, [loose], category="grid")  # named: used
    assert [r["category"] for r in rows] == ["grid"]


def test_stored_group_rules_by_hand():
    def sample(path: str, category: str = "images") -> Sample:
        return Sample(path, -1, category, (), "unknown")

    one = [{"dataset": "mvtec_ad", "category": "bottle"}]
    assert stored_group_for(sample("x/y.png"), "images", one) == 0  # a one-category model: always that one
    groups = [{"dataset": "mvtec_ad", "category": "bottle"}, {"dataset": "visa", "category": "pcb1"},
              {"dataset": "mvtec_loco", "category": "bottle"}]
    assert stored_group_for(sample("a.png", "pcb1"), "images", groups) == 1  # the sample's category
    assert stored_group_for(sample("/d/pcb1/test/good/a.png"), "images", groups) == 1  # nearest folder named so
    assert stored_group_for(sample("/pcb1/bottle/a.png"), "images", groups[1:2] + groups[:1]) == 1  # nearest wins
    assert stored_group_for(sample("a.png", "bottle"), "mvtec_loco", groups) == 2  # tie: the DataModule's dataset
    with pytest.raises(DatasetError, match="one of bottle, pcb1 "):
        stored_group_for(sample("a.png", "bottle"), "images", groups)  # tie between two datasets, none named
    with pytest.raises(DatasetError, match="--data.category"):
        stored_group_for(sample("/d/e/a.png"), "images", groups)


def test_export_is_refused_with_the_reason(tmp_path):
    from anomaly_zoo.export.exporter import ExportError, export_model

    with pytest.raises(ExportError, match="cannot be exported to onnx: .*per image .*anomaly-zoo predict"):
        export_model(AnomalyMoE(**TINY), "onnx", tmp_path / "m.onnx")


def test_native_size_outputs_place_the_map_in_the_centre_crop(fitted, tmp_path):
    """The maps cover the 0.875 centre crop: the writer's native-size map has the unscored border at its minimum."""
    import numpy as np

    from anomaly_zoo.viz.writer import PredictionWriter

    folder = tmp_path / "grid"
    folder.mkdir()
    source = sorted((fitted["root"] / "grid").rglob("*.png"))[0]
    shutil.copy(source, folder / "one.png")
    model = AnomalyMoE(**TINY, mask_settings=fitted["mask_settings"])
    assert model.map_coverage == 0.875
    writer = PredictionWriter(output_dir=str(tmp_path / "out"), save_maps=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[writer])
    trainer.predict(model, datamodule=ImageFiles(path=[str(folder)], image_size=64, batch_size=1),
                    ckpt_path=str(fitted["ckpt"]), return_predictions=False)
    native = np.load(next((tmp_path / "out").rglob("*.npy")))
    height, width = native.shape
    top, left = (height - round(height * 0.875)) // 2, (width - round(width * 0.875)) // 2
    assert top > 0 and left > 0
    border = np.concatenate([native[:top].ravel(), native[-top:].ravel(), native[:, :left].ravel()])
    assert np.all(border == native.min())
    inner = native[top:-top, left:-left]
    assert inner.max() > native.min()  # the scored crop carries the map


def test_predict_uses_the_crf_of_the_fit_when_the_backend_is_auto(fitted, tmp_path, monkeypatch):
    """A checkpoint fitted where pydensecrf was absent (torch CRF), predicted where `auto` picks pydensecrf:
    the masks come from the torch CRF, as in its fit, without the settings-differ warning."""
    import warnings

    from anomaly_zoo.models.anomalymoe import prepare_masks
    from anomaly_zoo.models.anomalymoe.crf import resolve_backend

    checkpoint = torch.load(fitted["ckpt"], map_location="cpu", weights_only=True)
    stored = checkpoint["anomalymoe_mask_centres"]
    assert stored["settings"]["settings"]["crf_backend"] == resolve_backend("auto")  # fitted on this machine
    stored["settings"]["settings"]["crf_backend"] = "torch"
    monkeypatch.setattr(prepare_masks, "resolve_backend",
                        lambda backend: "pydensecrf" if backend == "auto" else resolve_backend(backend))
    data = ImageFiles(path=[str(next((fitted["root"] / "grid" / "test").rglob("*.png")))], category="grid",
                      image_size=64)
    data.setup("predict")
    settings = {**fitted["mask_settings"], "cache_dir": str(tmp_path / "cache")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the settings-differ warning would fail here
        preparer = prepare_masks.attach_stored_component_masks(data, "predict", stored, **settings)
    assert preparer.settings.crf_backend == "torch"
    stored["settings"]["settings"]["crf_backend"] = "pydensecrf"  # an explicit choice is kept, and warned about
    with pytest.warns(UserWarning, match="component-mask settings differ"):
        preparer = prepare_masks.attach_stored_component_masks(data, "predict", stored,
                                                               **{**settings, "crf_backend": "torch"})
    assert preparer.settings.crf_backend == "torch"
