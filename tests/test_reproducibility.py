"""With ``--seed_everything N`` two CPU runs of ``anomaly-zoo fit --test_after_fit true`` give bit-identical weights
(every tensor of ``last.ckpt``) and identical result tables; another seed gives other weights (the comparison
can fail). UniAD (tiny; dropout, feature jitter and shuffling all draw random numbers) on synthetic data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from anomaly_zoo.metrics import load_results
from tests.test_cli import run_cli

TINY = ["--model", "uniad", "--model.backbone", "test_efficientnet", "--model.taps", "[0, 2, 4]",
        "--model.feature_size", "4", "--model.hidden_dim", "16", "--model.num_heads", "2",
        "--model.num_encoder_layers", "1", "--model.num_decoder_layers", "1", "--model.dim_feedforward", "32",
        "--model.neighbor_size", "3", "--model.pretrained", "false", "--model.lr", "0.01",
        "--data", "synthetic", "--data.category", "carpet", "--data.generated_size", "32", "--data.num_train", "12",
        "--data.num_val", "0", "--data.num_test", "6", "--data.image_size", "32", "--data.batch_size", "4",
        "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "true"]


def fit(root: Path, seed: int) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    result = run_cli("fit", *TINY, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root), cwd=root.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    run = root / "uniad" / "synthetic" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return state, load_results(run / "test_results.csv")


@pytest.mark.timeout(600)
def test_same_seed_gives_bit_identical_weights_and_tables(tmp_path: Path):
    (a, table_a), (b, table_b) = fit(tmp_path / "a", 0), fit(tmp_path / "b", 0)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    pd.testing.assert_frame_equal(table_a, table_b, check_exact=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_another_seed_gives_other_weights(tmp_path: Path):
    (a, _), (c, _) = fit(tmp_path / "a", 0), fit(tmp_path / "c", 1)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("model.reconstruction"))
