"""The MoECLIP demo config runs end to end through the CLI (fit, test, predict); the paper defaults fail in one
clear line without weights. That the demo learns is tested in test_moeclip_learning.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "anomaly-zoo")


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
