"""The `anomaly-zoo` entry point, run as a user runs it (a subprocess of the installed console script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomaly_zoo.cli import class_options_first, expand_short_names
from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.feature_distance import FeatureDistance

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "anomaly-zoo")


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env} if env else None)


def test_short_names_become_class_paths():
    argv = expand_short_names(["fit", "--model", "feature_distance", "--data=synthetic", "--trainer.max_epochs", "1"])
    assert argv == [
        "fit",
        "--model",
        f"{FeatureDistance.__module__}.FeatureDistance",
        f"--data={SyntheticDataModule.__module__}.SyntheticDataModule",
        "--trainer.max_epochs",
        "1",
    ]


def test_nested_datamodules_and_full_syntax_are_untouched():
    argv = ["fit", "--data", "cross_dataset", "--data.train_data", "visa", "--data.init_args.test_data=mvtec_ad",
            "--model.init_args.lr", "1e-4", "--config", "configs/x.yaml"]
    out = expand_short_names(argv)
    assert out[2].endswith("CrossDataset") and out[4].endswith(".VisA") and out[5].endswith(".MVTecAD")
    assert out[6:] == argv[6:]
    assert expand_short_names(["--model", "my.pkg.Model"]) == ["--model", "my.pkg.Model"]
    assert expand_short_names(["--model", "FeatureDistance"])[1].endswith("lightning.FeatureDistance")


def test_unknown_model_fails_with_known_names():
    result = run_cli("fit", "--model", "nosuchmodel", "--data", "synthetic")
    assert result.returncode == 2
    assert "unknown model 'nosuchmodel'" in result.stderr
    assert "feature_distance" in result.stderr


def test_class_options_move_before_their_own_options():
    argv = ["fit", "--data.category", "[grid]", "--trainer.max_epochs", "1", "--data", "x.Data", "--model.lr", "1",
            "--model=y.Model", "--data.init_args.train_data.init_args.root", "r", "--data.init_args.train_data", "z.T"]
    assert class_options_first(argv) == [
        "fit", "--data", "x.Data", "--data.category", "[grid]", "--trainer.max_epochs", "1", "--model=y.Model",
        "--model.lr", "1", "--data.init_args.train_data", "z.T", "--data.init_args.train_data.init_args.root", "r"]
    assert class_options_first(["fit", "--data", "x.Data", "--data.a", "1"]) == ["fit", "--data", "x.Data", "--data.a", "1"]


def test_an_option_before_its_class_gets_the_subclass_defaults():
    """Before the reordering, `--data.category ... --data synthetic` trained at the base DataModule's defaults."""
    config = {}
    for order in (["--data.category", "[grid]", "--data", "synthetic"], ["--data", "synthetic", "--data.category", "[grid]"]):
        result = run_cli("fit", "--model", "feature_distance", *order, "--print_config")
        assert result.returncode == 0, result.stderr[-2000:]
        config[order[0]] = yaml.safe_load(result.stdout)["data"]["init_args"]
    assert config["--data.category"] == config["--data"]
    assert config["--data"]["category"] == ["grid"] and config["--data"]["image_size"] is None  # synthetic's own


def test_python_m_anomaly_zoo_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "anomaly_zoo", "fit", "--model", "nosuchmodel"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "unknown model 'nosuchmodel'" in result.stderr


def test_unknown_data_fails_with_known_names():
    result = run_cli("fit", "--model", "feature_distance", "--data", "imagenet")
    assert result.returncode == 2
    assert "unknown datamodule 'imagenet'" in result.stderr and "mvtec_ad" in result.stderr


def test_missing_dataset_root_is_one_clear_line(tmp_path: Path):
    result = run_cli("fit", "--model", "feature_distance", "--model.pretrained", "false", "--data", "mvtec_ad",
                     "--data.root", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    # the one line says what is missing, where, and which option to fix
    assert "MVTec AD root" in errors[0] and str(tmp_path / "nowhere") in errors[0] and "root" in errors[0]


def test_pretrained_weights_offline_error_names_the_option(tmp_path: Path):
    result = run_cli("fit", "--model", "feature_distance", "--data", "synthetic", cwd=tmp_path)
    assert result.returncode == 1
    assert "pretrained false" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_models_and_datasets():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "feature_distance" in result.stdout and "synthetic" in result.stdout


def test_model_help_shows_the_models_own_options():
    result = run_cli("fit", "--model", "feature_distance", "--help")
    assert result.returncode == 0
    assert "--model.backbone" in result.stdout and "--model.pretrained" in result.stdout


@pytest.mark.timeout(600)
def test_fit_and_test_end_to_end(tmp_path: Path):
    result = run_cli(
        "fit", "--model", "feature_distance", "--data", "synthetic",
        "--model.pretrained", "false", "--data.image_size", "64", "--data.num_workers", "0",
        "--data.batch_size", "16", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "true", "--seed_everything", "0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    csvs = list(tmp_path.rglob("test_results.csv"))
    assert len(csvs) == 1, list(tmp_path.rglob("*"))
    assert csvs[0].parent.parent.parent.name == "feature_distance"  # results/<model>/<data>/version_N
    table = pd.read_csv(csvs[0], index_col=0)
    assert table.index[-1] == "mean" and len(table) >= 3
    assert {"I-AUROC", "P-AUROC", "AUPRO", "mAD"} <= set(table.columns)
    assert table.loc["mean", "I-AUROC"] > 55.0  # a random-init baseline still separates synthetic defects
    assert "I-AUROC" in result.stdout + result.stderr  # the table is printed
    # The saved checkpoint tests again from a fresh process, to the same numbers.
    ckpt = next(tmp_path.rglob("*.ckpt"))
    again = run_cli(
        "test", "--model", "feature_distance", "--data", "synthetic", "--model.pretrained", "false",
        "--data.image_size", "64", "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "t"),
        "--trainer.enable_progress_bar", "false", "--ckpt_path", str(ckpt), cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    retest = pd.read_csv(next((tmp_path / "t").rglob("test_results.csv")), index_col=0)
    pd.testing.assert_frame_equal(retest, table)
    assert "epochs trained: 1;" in (tmp_path / "t").joinpath(next((tmp_path / "t").rglob("test_results.md"))).read_text()
    # `predict` writes one CSV row and one overlay per test image.
    predicted = run_cli(
        "predict", "--model", "feature_distance", "--data", "synthetic", "--model.pretrained", "false",
        "--data.image_size", "64", "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "p"),
        "--trainer.enable_progress_bar", "false", "--ckpt_path", str(ckpt), cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    scores = pd.read_csv(next((tmp_path / "p").rglob("predictions.csv")))
    assert len(scores) == len(list((tmp_path / "p").rglob("overlays/**/*.png"))) > 0
    assert set(scores.columns) == {"path", "category", "label", "pred_score", "pred_label", "overlay"}
    assert set(scores["category"]) == set(table.index[:-1])


def test_checkpoint_supplies_backbone_weights_offline(tmp_path: Path):
    """Trained with a local backbone file that is gone at test time: the checkpoint alone must suffice."""
    import torch

    from anomaly_zoo.models.components.backbone import create_timm_model

    weights = tmp_path / "resnet18.pth"
    torch.save(create_timm_model("resnet18", pretrained=False).state_dict(), weights)
    common = ["--model", "feature_distance", "--data", "synthetic", "--data.image_size", "32",
              "--data.num_workers", "0", "--data.category", "stripes", "--trainer.enable_progress_bar", "false"]
    fit = run_cli("fit", *common, "--model.backbone_weights", str(weights), "--trainer.max_epochs", "1",
                  "--trainer.default_root_dir", str(tmp_path / "fit"), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    weights.unlink()
    ckpt = str(next((tmp_path / "fit").rglob("*.ckpt")))
    test = run_cli("test", *common, "--ckpt_path", ckpt, "--trainer.default_root_dir", str(tmp_path / "t"),
                   cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert next((tmp_path / "t").rglob("test_results.csv")).is_file()


def test_wandb_logger_works_offline(tmp_path: Path):  # wandb is a declared dependency: no skip
    result = run_cli(
        "fit", "--model", "feature_distance", "--data", "synthetic", "--model.pretrained", "false",
        "--data.image_size", "32", "--data.num_workers", "0", "--data.category", "stripes",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.offline", "true", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--test_after_fit", "true", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run was written"
