"""Two CPU processes (DDP, gloo) must report exactly the numbers of one process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.test_cli import run_cli

COMMON = ["--model", "feature_distance", "--data", "synthetic", "--model.pretrained", "false",
          "--data.image_size", "32", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.accelerator", "cpu"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("pixel_metrics", ["exact", "streaming"])
def test_ddp_test_equals_single_process(tmp_path: Path, pixel_metrics: str):
    fit = run_cli("fit", *COMMON, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "fit"),
                  "--seed_everything", "0", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = str(next((tmp_path / "fit").rglob("*.ckpt")))
    tables = {}
    # Batch size 5 and an odd number of test images per rank leave uneven shards: padding would show.
    for devices, strategy in (("1", "auto"), ("2", "ddp")):
        out = tmp_path / f"test{devices}"
        result = run_cli("test", *COMMON, "--model.pixel_metrics", pixel_metrics, "--data.eval_batch_size", "5",
                         "--trainer.devices", devices, "--trainer.strategy", strategy,
                         "--trainer.default_root_dir", str(out), "--ckpt_path", ckpt, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        tables[devices] = pd.read_csv(next(out.rglob("test_results.csv")), index_col=0)
    pd.testing.assert_frame_equal(tables["2"], tables["1"], check_exact=True)
