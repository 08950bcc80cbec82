"""configs/anomalymoe/unified.yaml end to end on generated trees in the real layouts (MVTec AD, VisA, MVTec LOCO).

The shipped config, unchanged, through the installed CLI; only what a CPU test must shrink is overridden on the
command line, with the options its header documents (``--data.init_args.datasets.<name>.init_args.root``): a tiny
random ViT and experts, 64-px images, two iterations, no workers. ``fit --test_after_fit true`` must prepare the
component masks of all three datasets, train one model on their union and write one table per dataset plus the
per-dataset summary; ``test`` from the written checkpoint must give the same overall table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from anomaly_zoo.metrics import load_results
from tests.data.layouts import make_loco, make_mvtec, make_visa
from tests.test_cli import ROOT, run_cli

CONFIG = ROOT / "configs" / "anomalymoe" / "unified.yaml"
TINY_MODEL = [
    "--model.init_args.pretrained", "false",
    "--model.init_args.backbone_kwargs", "{embed_dim: 24, depth: 12, num_heads: 2, img_size: 70}",
    "--model.init_args.decoder_heads", "2", "--model.init_args.router_hidden", "16",
    "--model.init_args.global_ae_channels", "[4, 4, 8]", "--model.init_args.global_student_channels", "[4, 8]",
    "--model.init_args.global_input_size", "56", "--model.init_args.component_hidden", "16",
    "--model.init_args.component_inner", "8", "--model.init_args.component_code", "8",
    "--model.init_args.warmup_iters", "1", "--model.init_args.total_iters", "2",
    "--model.init_args.mask_settings",
    "{pretrained: false, feature_model_kwargs: {embed_dim: 32, depth: 1, num_heads: 2}, image_size: 64, "
    "coreset_ratio: 0.1, progress: false}",
]
CATEGORIES = {"mvtec_ad": "bottle", "visa": "candle", "mvtec_loco": "breakfast_box"}


def _data_args(tmp_path: Path) -> list[str]:
    make_mvtec(tmp_path / "mvtec_ad", categories=(CATEGORIES["mvtec_ad"],), n_train=6, n_good=1, defects={"crack": 2})
    make_visa(tmp_path / "visa", categories=(CATEGORIES["visa"],), n_train=6, n_normal_test=1, n_anomaly=2)
    make_loco(tmp_path / "mvtec_loco", categories=(CATEGORIES["mvtec_loco"],), n_train=6, n_val=1, n_good=1,
              n_anomalous=2)
    args = ["--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4",
            "--data.init_args.num_workers", "0"]
    for name in CATEGORIES:
        prefix = f"--data.init_args.datasets.{name}.init_args."
        args += [prefix + "root", str(tmp_path / name), prefix + "image_size", "64"]
    return args


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_unified_config_fits_and_tests_on_three_real_layouts_with_per_dataset_tables(tmp_path: Path):
    common = ["--config", str(CONFIG), *TINY_MODEL, *_data_args(tmp_path), "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false"]
    env_root = ["--trainer.default_root_dir", str(tmp_path / "fit")]
    fit = run_cli("fit", *common, *env_root, "--trainer.max_steps", "2", "--test_after_fit", "true",
                  cwd=tmp_path, timeout=850)
    assert fit.returncode == 0, fit.stderr[-4000:]
    run = next((tmp_path / "fit").rglob("test_results.csv")).parent
    overall = load_results(run / "test_results.csv")
    expected = {f"{name}/{category}" for name, category in CATEGORIES.items()}
    assert expected <= set(overall.index)
    for name, category in CATEGORIES.items():
        table = load_results(run / f"test_results_{name}.csv")
        assert category in set(table.index) or f"{name}/{category}" in set(table.index), (name, table.index)
        assert table.loc[table.index != "mean", "I-AUROC"].notna().all(), name
    summary = load_results(run / "test_results_datasets.csv")
    assert set(CATEGORIES) <= set(summary.index)
    routing = pd.read_csv(run / "routing_statistics.csv")
    assert len(routing) == 3 and set(routing["dataset"]) == set(CATEGORIES)
    checkpoint = next(run.rglob("*.ckpt"))
    test = run_cli("test", *common, "--ckpt_path", str(checkpoint), "--trainer.default_root_dir",
                   str(tmp_path / "test"), cwd=tmp_path, timeout=850)
    assert test.returncode == 0, test.stderr[-4000:]
    again = load_results(next((tmp_path / "test").rglob("test_results.csv")))
    pd.testing.assert_frame_equal(overall, again, check_exact=True)
