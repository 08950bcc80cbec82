"""``predict`` on plain images: one row and one native-size overlay per image, known decisions, no collisions."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.images import ImageFiles, find_images
from anomaly_zoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.components.thresholds import Thresholds
from anomaly_zoo.viz.outputs import output_names
from anomaly_zoo.viz.writer import PredictionWriter

HEIGHT, WIDTH = 40, 56  # native size, not the model's 32×32


def _red(value: int) -> float:
    """Channel 0 of the model input for a red level (ImageNet normalisation)."""
    return (value / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]


class RedOracle(AnomalyModule):
    """Map = the input's red channel: a red patch is the defect, by construction."""

    def __init__(self) -> None:
        super().__init__()
        self.thresholds = Thresholds(image=_red(128), pixel=_red(128), image_range=(_red(0), _red(255)),
                                     pixel_range=(_red(0), _red(255)), image_method="hand", pixel_method="hand",
                                     source="hand-set", n_images=0)

    def predict_anomaly(self, images):
        maps = images[:, :1]
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}


def _write(path, patch: bool) -> None:
    image = np.full((HEIGHT, WIDTH, 3), 20, np.uint8)
    if patch:
        image[10:30, 20:44, 0] = 250  # a red rectangle: 20×24 pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture()
def folders(tmp_path):
    # Two folders with the same file names: outputs must not overwrite each other.
    for folder in ("line_a", "line_b"):
        _write(tmp_path / "imgs" / folder / "part_1.png", patch=False)
        _write(tmp_path / "imgs" / folder / "part_2.png", patch=True)
    _write(tmp_path / "imgs" / "line_b" / "nested" / "part_3.png", patch=True)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def _predict(data, tmp_path, **writer) -> pd.DataFrame:
    model = RedOracle()
    out = tmp_path / "out"
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[PredictionWriter(output_dir=str(out), **writer)])
    trainer.predict(model, datamodule=data, return_predictions=False)
    return pd.read_csv(out / "predictions.csv", keep_default_na=False)


def test_a_folder_without_labels_gives_one_row_and_one_overlay_per_image_with_the_right_decisions(folders, tmp_path):
    data = ImageFiles(path=str(folders), image_size=32, batch_size=2)
    table = _predict(data, tmp_path, save_maps=True, save_masks=True)
    assert len(table) == 5 and table["path"].is_unique
    assert (table["label"] == "").all()  # nobody labelled these images: no invented labels
    expected = {"part_1.png": 0, "part_2.png": 1, "part_3.png": 1}
    assert [expected[p.rsplit("/", 1)[-1]] for p in table["path"]] == table["pred_label"].tolist()
    out = tmp_path / "out"
    overlays = sorted(str(p.relative_to(out)) for p in out.rglob("overlays/**/*.png"))
    assert overlays == sorted(table["overlay"]) and len(set(overlays)) == 5
    assert "overlays/line_a/part_1.png" in overlays and "overlays/line_b/part_1.png" in overlays
    for name in overlays:
        assert Image.open(out / name).size == (WIDTH, HEIGHT)  # native resolution, not 32×32
    # The predicted mask at native size covers the red rectangle (up to the map's upsampling blur).
    mask = np.asarray(Image.open(out / "masks/line_a/part_2.png")) > 0
    truth = np.zeros((HEIGHT, WIDTH), bool)
    truth[10:30, 20:44] = True
    assert (mask & truth).sum() / truth.sum() > 0.8 and (mask & ~truth).sum() / truth.sum() < 0.2
    raw = np.load(out / "maps/line_a/part_2.npy")
    assert raw.shape == (HEIGHT, WIDTH) and raw[20, 32] == pytest.approx(_red(250), abs=1e-3)
    assert not (np.asarray(Image.open(out / "masks/line_a/part_1.png")) > 0).any()


def test_globs_and_repeated_paths_predict_each_image_once(folders, tmp_path):
    paths = [str(folders / "line_a" / "part_1.png"), str(folders / "**" / "*.png"), str(folders / "line_a")]
    found = find_images(paths)
    assert len(found) == 5 and found[0].name == "part_1.png"
    table = _predict(ImageFiles(path=paths, image_size=32), tmp_path)
    assert len(table) == 5 and table["path"].is_unique


def test_a_pattern_without_images_names_itself(tmp_path):
    with pytest.raises(DatasetError, match="nothing_here"):
        find_images(str(tmp_path / "nothing_here" / "*.png"))
    with pytest.raises(DatasetError, match="predict"):
        ImageFiles(path=str(tmp_path)).setup("fit")


def test_output_names_never_collide():
    names = output_names(["/d/a/x.png", "/d/b/x.png", "/d/a/x.jpg", "/d/a/y.png"])
    assert len(set(names.values())) == 4
    assert names["/d/b/x.png"] == "b/x" and names["/d/a/y.png"] == "a/y"
    assert {names["/d/a/x.png"], names["/d/a/x.jpg"]} == {"a/x_png", "a/x_jpg"}


def test_paths_that_are_not_files_take_the_pixels_from_the_batch(tmp_path):
    """In-memory datasets (paths are names, not files): the overlay comes from the batch image."""

    class InMemory(torch.utils.data.Dataset):
        samples = None

        def __len__(self):
            return 2

        def __getitem__(self, i):
            image = torch.full((3, 32, 32), _red(20))
            if i == 1:
                image[0, 8:24, 8:24] = _red(250)
            return {"image": image, "mask": torch.zeros(1, 32, 32, dtype=torch.uint8), "label": torch.tensor(-1),
                    "category": "mem", "path": f"memory://{i}", "index": torch.tensor(i)}

    out = tmp_path / "out"
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[PredictionWriter(output_dir=str(out))])
    trainer.predict(RedOracle(), dataloaders=torch.utils.data.DataLoader(InMemory(), batch_size=2),
                    return_predictions=False)
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert table["pred_label"].tolist() == [0, 1]
    assert all(Image.open(out / p).size == (32, 32) for p in table["overlay"])


# ---- the command line: short form, options, end to end ------------------------------------------------------
def test_the_predict_short_form_expands_to_the_images_data_with_the_checkpoints_input_format(tmp_path, monkeypatch):
    from anomaly_zoo.deploy_cli import prepare_deploy_arguments

    monkeypatch.setattr(AnomalyModule, "prediction_options", {})
    ckpt = tmp_path / "model.ckpt"
    torch.save({"anomaly_zoo": {"model_class": "anomaly_zoo.models.uniad.lightning.UniAD",
                                "preprocessing": {"image_size": [48, 64], "normalization": "clip",
                                                  "interpolation": "bicubic"}}}, ckpt)
    argv = prepare_deploy_arguments(["predict", "--ckpt_path", str(ckpt), "imgs/", "more/*.png", "--save_maps",
                                     "--output_dir", "out", "--save_masks", "false"])
    assert argv[:6] == ["predict", "--data", "anomaly_zoo.data.images.ImageFiles",
                        '--data.init_args.path=["imgs/", "more/*.png"]', "--ckpt_path", str(ckpt)]
    assert argv[6:8] == ["--model", "anomaly_zoo.models.uniad.lightning.UniAD"]  # the checkpoint's model
    assert set(argv[8:]) == {"--data.init_args.image_size=[48, 64]", "--data.init_args.normalization=clip",
                             "--data.init_args.interpolation=bicubic"}
    assert AnomalyModule.prediction_options == {"save_maps": True, "output_dir": "out", "save_masks": False}
    # An explicit size wins over the checkpoint's.
    argv = prepare_deploy_arguments(["predict", "--ckpt_path", str(ckpt), "imgs/", "--data.image_size", "32"])
    assert not any(a.startswith("--data.init_args.image_size") for a in argv)


def test_data_options_given_with_the_short_form_keep_the_images_defaults(tmp_path):
    """`predict --ckpt_path M imgs/ --data.category grid`: before the fix the category came before the data class,
    and jsonargparse carried the base DataModule's defaults (batch 32, 4 workers) into ImageFiles."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    ckpt = tmp_path / "model.ckpt"
    torch.save({"anomaly_zoo": {"model_class": "anomaly_zoo.models.feature_distance.FeatureDistance",
                                "preprocessing": {"image_size": [32, 32], "normalization": "imagenet",
                                                  "interpolation": "bilinear"}}}, ckpt)
    cli = str(Path(sys.executable).with_name("anomaly-zoo"))
    done = subprocess.run([cli, "predict", "--ckpt_path", str(ckpt), "imgs/", "--data.category", "grid",
                           "--print_config"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = yaml.safe_load(done.stdout)["data"]
    assert data["class_path"] == "anomaly_zoo.data.images.ImageFiles"
    assert data["init_args"]["category"] == "grid" and data["init_args"]["path"] == ["imgs/"]
    assert data["init_args"]["batch_size"] == 8 and data["init_args"]["num_workers"] == 0  # ImageFiles' own


def test_threshold_options_are_taken_from_the_fit_command_line(monkeypatch):
    from anomaly_zoo.deploy_cli import prepare_deploy_arguments
    from anomaly_zoo.models.components.thresholds import ThresholdOptions

    monkeypatch.setattr(AnomalyModule, "threshold_options", ThresholdOptions())
    argv = prepare_deploy_arguments(["fit", "--model", "x", "--threshold.quantile", "0.95", "--threshold.normalize=true"])
    assert argv == ["fit", "--model", "x"]
    assert AnomalyModule.threshold_options == ThresholdOptions(method="auto", quantile=0.95, normalize=True)
    with pytest.raises(DatasetError, match="quantile"):
        prepare_deploy_arguments(["fit", "--threshold.quantile", "1.5"])


def test_predict_on_a_plain_folder_scores_every_image_once_without_inventing_labels(folders, tmp_path):
    from anomaly_zoo.data.folder import Folder

    # `--data folder --data.root imgs/`: no normal_dir needed, every image under root, labels empty.
    table = _predict(Folder(root=str(folders), image_size=32, num_workers=0), tmp_path / "plain")
    assert len(table) == 5 and table["path"].is_unique and (table["label"] == "").all()
    # With normal_dir: all of it (not the seeded 20 % test fraction), labelled normal as the user said.
    table = _predict(Folder(root=str(folders), normal_dir="line_a", abnormal_dir="line_b", image_size=32,
                            num_workers=0), tmp_path / "dirs")
    assert sorted(table["path"].str.rsplit("/", n=2).str[-2:].str.join("/")) == [
        "line_a/part_1.png", "line_a/part_2.png", "line_b/part_1.png", "line_b/part_2.png"]
    assert table.set_index("path")["label"].to_dict() == {
        str(folders / "line_a" / "part_1.png"): 0, str(folders / "line_a" / "part_2.png"): 0,
        str(folders / "line_b" / "part_1.png"): 1, str(folders / "line_b" / "part_2.png"): 1}
    with pytest.raises(DatasetError, match="normal_dir"):
        Folder(root=str(folders), image_size=32).setup("fit")


def test_a_centre_crop_map_lands_in_the_crop_of_the_native_image():
    from anomaly_zoo.viz.outputs import native_map as _native_map

    native = _native_map(np.ones((4, 4), np.float32) * 2, 20, 40, coverage=0.5)
    assert native.shape == (20, 40)
    assert (native[5:15, 10:30] == 2).all()  # the centred half of each side
    assert native[:5].max() == 2 and native[0, 0] == 2  # the border gets the map's minimum (here 2 everywhere)
    ramp = np.arange(16, dtype=np.float32).reshape(4, 4)
    native = _native_map(ramp, 20, 40, coverage=0.5)
    assert native[0, 0] == 0.0 and native[10, 20] > 0.0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_three_deploy_commands_end_to_end(folders, tmp_path):
    """fit (calibrates) → `predict CKPT FOLDER` (short form) → `export` (parity) → `predict` from the ONNX file,
    as a user runs them."""
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).with_name("anomaly-zoo"))

    def run(*args):
        done = subprocess.run([cli, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run("fit", "--model", "feature_distance", "--data", "synthetic", "--model.pretrained", "false",
        "--data.category", "[stripes]", "--data.image_size", "32", "--data.num_workers", "0",
        "--data.root", str(tmp_path / "data"), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "results"), "--threshold.quantile", "0.9")
    ckpt = next((tmp_path / "results").rglob("*.ckpt"))
    predicted = run("predict", "--ckpt_path", str(ckpt), str(folders), "--output_dir", str(tmp_path / "pred"),
                    "--save_masks")
    assert "0.00it/s" not in predicted.stdout + predicted.stderr  # one batch: no speed is known, none printed
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv", keep_default_na=False)
    assert len(table) == 5 and (table["label"] == "").all() and set(table["pred_label"]) <= {0, 1}
    assert len(list((tmp_path / "pred" / "masks").rglob("*.png"))) == 5
    exported = run("export", "--ckpt_path", str(ckpt), "--format", "onnx", "--output", str(tmp_path / "model.onnx"))
    assert "max |Δ map|" in exported.stdout and (tmp_path / "model.onnx").is_file()
    run("predict", "--ckpt_path", str(tmp_path / "model.onnx"), str(folders), "--output_dir", str(tmp_path / "onnx"))
    from_onnx = pd.read_csv(tmp_path / "onnx" / "predictions.csv", keep_default_na=False)
    assert from_onnx["path"].tolist() == table["path"].tolist()
    assert from_onnx["pred_label"].tolist() == table["pred_label"].tolist()
    np.testing.assert_allclose(from_onnx["pred_score"], table["pred_score"], atol=1e-4, rtol=0)


def test_images_of_a_category_without_its_own_thresholds_get_a_note(folders, tmp_path, caplog):
    """A unified model decides each category at its own thresholds; unnamed images fall back to the global ones."""
    import logging

    model = RedOracle()
    own = Thresholds(image=_red(10), pixel=_red(10), image_range=(_red(0), _red(255)),
                     pixel_range=(_red(0), _red(255)), image_method="hand", pixel_method="hand", source="hand",
                     n_images=4)
    model.thresholds.per_category = {"line": own, "other": own}
    model.thresholds.per_category_active = True
    for category, expected in (("images", True), ("line", False)):
        caplog.clear()
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[PredictionWriter(output_dir=str(tmp_path / category))])
        with caplog.at_level(logging.INFO):
            trainer.predict(model, datamodule=ImageFiles(path=str(folders), image_size=32, category=category),
                            return_predictions=False)
        assert ("category 'images' has none" in caplog.text) is expected, caplog.text
        table = pd.read_csv(tmp_path / category / "predictions.csv", keep_default_na=False)
        assert bool((table["pred_label"] == 1).all()) == (not expected)  # "line": its own, lower threshold
