"""``predict --ckpt_path model.onnx``: the exported file alone gives what ``predict`` with the model gives,
without importing torch (ONNX), and bad input ends in one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from anomaly_zoo.data.images import ImageFiles
from anomaly_zoo.data.synthetic_shapes import render, sample_rng
from anomaly_zoo.export import export_model
from anomaly_zoo.export.predict import default_output_dir
from anomaly_zoo.export.runtime import ExportedModel, ExportedModelError
from anomaly_zoo.launcher import main as launcher_main
from anomaly_zoo.models.components.thresholds import Thresholds
from anomaly_zoo.viz.writer import PredictionWriter
from tests.test_export import demo_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Synthetic renders at three native sizes (none the model's 128 px), normal and defective, in two folders."""
    root = tmp_path_factory.mktemp("imgs")
    for i, (category, defect, size) in enumerate([("assembly", "good", 128), ("assembly", "missing_part", 150),
                                                  ("pill", "good", 96), ("pill", "stain", 160),
                                                  ("grid", "scratch", 128)]):
        rendered = render(category, defect, size, sample_rng(0, category, "test", i))
        folder = root / ("line_a" if i % 2 else "line_b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rendered.image).save(folder / f"part_{i}.png")
    return root


def _split_thresholds(model, images: Path) -> None:
    """Thresholds between the middle image scores and at the median pixel of ``images``: some fall on each side."""
    data = ImageFiles(path=str(images), image_size=model.preprocessing["image_size"], batch_size=8)
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    with torch.no_grad():
        output = model.predict_anomaly(batch["image"])
    ranked = output["pred_score"].sort().values  # midway between two scores: no score sits on the threshold
    image, pixel = float(ranked[len(ranked) // 2 - 1: len(ranked) // 2 + 1].mean()), float(output["anomaly_map"].median())
    model.thresholds = Thresholds(image=image, pixel=pixel, image_range=(image - 1, image + 1),
                                  pixel_range=(pixel - 1, pixel + 1), image_method="hand", pixel_method="hand",
                                  source="test", n_images=5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images) -> dict:
    """The UniAD demo model (random init, thresholds splitting ``images``) exported to ONNX (dynamic and
    fixed batch) and TorchScript."""
    out = tmp_path_factory.mktemp("exported")
    model = demo_model("uniad")
    _split_thresholds(model, images)
    return {"model": model,
            "onnx": export_model(model, "onnx", out / "uniad.onnx", onnx_exporter="tracing").path,
            "onnx_b2": export_model(model, "onnx", out / "uniad_b2.onnx", onnx_exporter="tracing", batch_size=2).path,
            "torchscript": export_model(model, "torchscript", out / "uniad.pt").path}


def _predict_with_model(model, images: Path, out: Path) -> pd.DataFrame:
    """The checkpoint route: Trainer.predict on `--data images` with the prediction writer."""
    data = ImageFiles(path=str(images), image_size=model.preprocessing["image_size"], batch_size=2)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[PredictionWriter(output_dir=str(out), save_maps=True, save_masks=True)])
    trainer.predict(model, datamodule=data, return_predictions=False)
    return pd.read_csv(out / "predictions.csv", keep_default_na=False)


def _predict_exported(path: Path, images: Path, out: Path, *extra: str) -> pd.DataFrame:
    with pytest.raises(SystemExit) as done:
        launcher_main(["predict", "--ckpt_path", str(path), str(images), "--output_dir", str(out), "--save_maps",
                       "--save_masks", *extra])
    assert done.value.code == 0
    return pd.read_csv(out / "predictions.csv", keep_default_na=False)


@pytest.mark.parametrize("kind", ["onnx", "onnx_b2", "torchscript"])
def test_exported_predict_writes_what_the_model_predict_writes(kind, exported, images, tmp_path):
    reference = _predict_with_model(exported["model"], images, tmp_path / "model")
    table = _predict_exported(exported[kind], images, tmp_path / kind, "--batch_size", "3")
    assert len(table) == 5 and table["path"].tolist() == reference["path"].tolist()
    assert (table["label"] == "").all() and table["overlay"].tolist() == reference["overlay"].tolist()
    np.testing.assert_allclose(table["pred_score"], reference["pred_score"], atol=1e-4, rtol=0)
    assert table["pred_label"].tolist() == reference["pred_label"].tolist()
    assert set(reference["pred_label"]) == {0, 1}  # the thresholds split these images
    for name in reference["overlay"]:
        stem = name.removeprefix("overlays/").removesuffix(".png")
        ours, theirs = (np.load(tmp_path / d / "maps" / f"{stem}.npy") for d in (kind, "model"))
        assert ours.shape == theirs.shape == Image.open(images / f"{stem}.png").size[::-1]  # native size
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
        overlay = [np.asarray(Image.open(tmp_path / d / name), dtype=int) for d in (kind, "model")]
        # The same picture up to colour quantisation where a map value lies on a JET step or at the outline.
        assert (np.abs(overlay[0] - overlay[1]).max(-1) > 1).mean() < 0.01
        masks = [np.asarray(Image.open(tmp_path / d / "masks" / f"{stem}.png")) > 0 for d in (kind, "model")]
        assert (masks[0] != masks[1]).mean() < 1e-3


def test_the_folder_spelling_predicts_the_same_images(exported, images, tmp_path):
    given = _predict_exported(exported["onnx"], images, tmp_path / "paths")
    with pytest.raises(SystemExit) as done:
        launcher_main(["predict", "--ckpt_path", str(exported["onnx"]), "--data", "folder", "--data.root", str(images),
                       "--output_dir", str(tmp_path / "folder")])
    assert done.value.code == 0
    assert pd.read_csv(tmp_path / "folder" / "predictions.csv", keep_default_na=False).equals(given)


def test_onnx_predict_imports_neither_torch_nor_lightning(exported, images, tmp_path):
    code = ("import sys\nfrom anomaly_zoo.launcher import main\ntry:\n"
            f"    main(['predict', '--ckpt_path', {str(exported['onnx'])!r}, {str(images)!r}, '--output_dir', "
            f"{str(tmp_path / 'out')!r}])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'lightning', 'timm', 'albumentations') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == 5


def test_normalised_graph_decides_at_one_half_and_a_category_picks_its_own_thresholds(images, tmp_path, capsys):
    model = demo_model("uniad")
    _split_thresholds(model, images)
    t = model.thresholds
    # A category whose own thresholds are far below the global ones: every image of it is anomalous.
    low = Thresholds(image=t.image - 0.9, pixel=t.pixel - 0.9, image_range=t.image_range, pixel_range=t.pixel_range,
                     image_method="hand", pixel_method="hand", source="test", n_images=4)
    model.thresholds = Thresholds(**{**t.__dict__, "normalize": True, "per_category": {"low": low},
                                     "per_category_active": True})
    path = export_model(model, "onnx", tmp_path / "norm.onnx", onnx_exporter="tracing").path
    plain = _predict_exported(path, images, tmp_path / "plain")
    assert ((plain["pred_score"] >= 0.5).astype(int) == plain["pred_label"]).all()
    assert plain["pred_score"].between(0, 1).all() and "raw_score" not in plain
    assert "category 'images' has none" in capsys.readouterr().out  # the note names --category and 'low'
    own = _predict_exported(path, images, tmp_path / "own", "--category", "low")
    assert "has none" not in capsys.readouterr().out
    assert (own["category"] == "low").all() and (own["pred_label"] == 1).all()
    assert plain["pred_label"].sum() < 5  # so the category's thresholds, not the global ones, decided


def test_decision_thresholds_refuse_a_category_a_normalised_graph_cannot_decide():
    metadata = {"producer": "anomaly-zoo", "input": {"shape": ["N", 3, 8, 8]}, "normalized": True,
                "thresholds": {"image": 0.5, "pixel": 0.5, "mode": "per-category",
                               "per_category": {"near": {"image": 0.4, "pixel": 0.45, "exact": True},
                                                "far": {"image": 0.0, "pixel": 0.0, "exact": False}}}}
    model = ExportedModel(Path("m.onnx"), metadata, lambda x: (x, x))
    assert model.decision_thresholds("near") == (0.4, 0.45)
    assert model.decision_thresholds("other") == (0.5, 0.5)
    with pytest.raises(ExportedModelError, match="category 'far'.*cannot reproduce"):
        model.decision_thresholds("far")
    metadata["thresholds"]["mode"] = "global"  # stored but not used at fit: the global ones decide
    assert model.decision_thresholds("near") == (0.5, 0.5)


def _error_line(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        launcher_main(argv)
    assert done.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_input_ends_in_one_line_naming_it(exported, images, tmp_path, capsys):
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(Path(exported["onnx"]).read_bytes())  # without its .json metadata
    assert "lonely.onnx.json' is missing" in _error_line(["predict", "--ckpt_path", str(lonely), str(images)], capsys)
    line = _error_line(["predict", "--ckpt_path", str(exported["onnx"]), "--data", "folder", "--data.root",
                        str(images), "--data.normal_dir", "good"], capsys)
    assert "--data.normal_dir" in line and "checkpoint" in line
    assert "--data folder" in _error_line(["predict", "--ckpt_path", str(exported["onnx"])], capsys)
    line = _error_line(["predict", "--ckpt_path", str(exported["onnx"]), str(tmp_path / "nothing" / "*.png")], capsys)
    assert "nothing/*.png" in line
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    Path(f"{garbage}.json").write_text(Path(f"{exported['onnx']}.json").read_text())
    assert "onnxruntime cannot load" in _error_line(["predict", "--ckpt_path", str(garbage), str(images)], capsys)


def test_default_output_folder_follows_the_results_layout(tmp_path):
    assert default_output_dir(tmp_path, "uniad") == tmp_path / "uniad" / "images" / "version_0" / "predictions"
    (tmp_path / "uniad" / "images" / "version_3").mkdir(parents=True)
    assert default_output_dir(tmp_path, "uniad").parent.name == "version_4"


def test_a_torch_checkpoint_still_goes_to_the_lightning_cli(tmp_path):
    from anomaly_zoo.launcher import exported_model_path

    (tmp_path / "model.ckpt").write_bytes(b"")
    assert exported_model_path(["predict", "--ckpt_path", str(tmp_path / "model.ckpt"), "x.png"]) is None
    (tmp_path / "m.pt").write_bytes(b"")
    assert exported_model_path(["predict", f"--ckpt_path={tmp_path / 'm.pt'}"]) is None  # no export metadata
    Path(f"{tmp_path / 'm.pt'}.json").write_text(json.dumps({"producer": "anomaly-zoo"}))
    assert exported_model_path(["predict", f"--ckpt_path={tmp_path / 'm.pt'}"]) == str(tmp_path / "m.pt")
    assert exported_model_path(["test", "--ckpt_path", str(tmp_path / "m.pt")]) is None


def test_an_exported_model_where_a_checkpoint_is_needed_says_so(exported):
    from anomaly_zoo.data.errors import DatasetError
    from anomaly_zoo.export import load_model
    from anomaly_zoo.models.components.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="written by `anomaly-zoo export`: only `predict` runs it"):
        load_checkpoint(exported["onnx"], option="--ckpt_path")  # test / fit --ckpt_path
    with pytest.raises(DatasetError, match="needs the Lightning checkpoint"):
        load_model(exported["torchscript"])  # export --ckpt_path
