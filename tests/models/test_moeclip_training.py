"""MoECLIP learns: on a held-out synthetic seed, trained beats the same model untrained (project metrics);
the demo config runs end to end through the CLI (fit, test, predict)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from anomaly_zoo.data.cross_dataset import CrossDataset
from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.moeclip import MoECLIP

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "anomaly-zoo")
DEMO = yaml.safe_load((ROOT / "configs" / "demo" / "moeclip.yaml").read_text())
TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


def _data(categories: list[str]) -> CrossDataset:
    common = {"generated_size": 64, "num_val": 0, "image_size": 64, "normalization": "clip", "interpolation": "bicubic"}
    return CrossDataset(SyntheticDataModule(category=categories, num_test=32, seed=0, batch_size=8, **common),
                        SyntheticDataModule(category=categories, num_test=32, seed=1, batch_size=32, **common),
                        train_split="test", allow_seen_categories=True)


def _module(results_dir: Path) -> MoECLIP:
    pl.seed_everything(0)
    return MoECLIP(**DEMO["model"]["init_args"], results_dir=str(results_dir))


def _learns(tmp_path: Path, categories: list[str], epochs: int, pixel_margin: float, image_margin: float) -> None:
    untrained = _module(tmp_path / "untrained")
    pl.Trainer(**TRAINER).test(untrained, datamodule=_data(categories), verbose=False)
    trained = _module(tmp_path / "trained")
    trainer = pl.Trainer(max_epochs=epochs, **TRAINER)
    trainer.fit(trained, datamodule=_data(categories))
    trainer.test(trained, datamodule=_data(categories), verbose=False)
    before, after = untrained.results["test"].loc["mean"], trained.results["test"].loc["mean"]
    assert after["P-AUROC"] > before["P-AUROC"] + pixel_margin, (before["P-AUROC"], after["P-AUROC"])
    assert after["I-AUROC"] > before["I-AUROC"] + image_margin, (before["I-AUROC"], after["I-AUROC"])


@pytest.mark.slow  # margins not yet verified on an idle machine: kept out of `make test` until they are
def test_learns_on_a_held_out_seed_fast(tmp_path):
    _learns(tmp_path, ["stripes"], epochs=10, pixel_margin=10.0, image_margin=5.0)


@pytest.mark.slow
def test_learns_on_a_held_out_seed_demo_setting(tmp_path):
    _learns(tmp_path, ["stripes", "carpet", "pill"], epochs=8, pixel_margin=10.0, image_margin=5.0)


@pytest.mark.slow
def test_demo_config_fit_test_predict_through_the_cli(tmp_path):
    run = subprocess.run([CLI, "fit", "--config", "configs/demo/moeclip.yaml", "--test_after_fit", "true",
                          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    version = next((tmp_path / "moeclip").glob("*/version_0"))
    assert (version / "test_results.csv").is_file() and (version / "routing_statistics.csv").is_file()
    checkpoint = next(version.glob("checkpoints/*.ckpt"))
    predict = subprocess.run([CLI, "predict", "--config", "configs/demo/moeclip.yaml", "--ckpt_path", str(checkpoint),
                              "--trainer.default_root_dir", str(tmp_path / "predict")],
                             cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert predict.returncode == 0, predict.stderr[-3000:]


@pytest.mark.slow
def test_paper_defaults_fail_in_one_clear_line_without_weights(tmp_path):
    run = subprocess.run([CLI, "fit", "--model", "moeclip", "--data", "synthetic", "--trainer.default_root_dir",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "backbone_weights" in errors[0] and "pretrained false" in errors[0]
