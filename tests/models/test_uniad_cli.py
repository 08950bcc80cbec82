"""UniAD through the real `anomaly-zoo` entry point by registry name (the shipped configs: tests/test_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.test_cli import run_cli

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.accelerator", "cpu", "--test_after_fit", "true"]


def _table(directory: Path) -> pd.DataFrame:
    return pd.read_csv(next(directory.rglob("test_results.csv")), index_col=0)


@pytest.mark.slow  # the paper's EfficientNet-B4 (random init) at 96 px: minutes on 2 CPU cores
@pytest.mark.timeout(600)
def test_fit_uniad_by_registry_name_on_synthetic(tmp_path: Path):
    result = run_cli(
        "fit", "--model", "uniad", "--data", "synthetic", "--model.pretrained", "false",
        "--data.category", "stripes", "--data.image_size", "96", "--data.batch_size", "4", "--data.num_test", "8",
        "--data.num_val", "4", "--trainer.default_root_dir", str(tmp_path), *FAST, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = _table(tmp_path)
    assert list(table.index) == ["stripes", "mean"]
    assert table.notna().all().all()
    assert "uniad" in str(next(tmp_path.rglob("test_results.csv")))
    assert "16×16 average-pooled" in next(tmp_path.rglob("test_results.md")).read_text()
