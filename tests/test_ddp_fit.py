"""``anomaly-zoo fit`` with 2 CPU processes (Lightning starts them: ``--trainer.devices 2 --trainer.strategy ddp``):
each model fits, writes ``last.ckpt``, tests after fit on both ranks, and its checkpoint reloaded in ONE process
gives exactly the same table (every model in the fast suite on a few images; the demo configs' full data
in the slow suite). feature_distance is the regression of "DistributedDataParallel is not needed
when a module doesn't have any parameter that requires a gradient" (its statistics are summed over the ranks;
the same statistics as a single-process fit, since each image is seen once); UniAD checks gradient sync with
a frozen backbone (no unused-parameter error).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from anomaly_zoo.metrics import load_results
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--data", "synthetic", "--data.category", "[carpet, pill]", "--data.generated_size", "32",
          "--data.num_train", "11", "--data.num_val", "0", "--data.num_test", "7", "--data.image_size", "32",
          "--data.batch_size", "4", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          "--seed_everything", "0"]
#: One torch thread in every process: Lightning gives each CPU DDP rank cores // ranks threads, and a CPU conv's
#: float sums follow the thread count, so a 2-thread single process would differ from the ranks in the last bits.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
MODELS = {
    "feature_distance": ["--model", "feature_distance", "--model.pretrained", "false", "--trainer.max_epochs", "1"],
    "uniad": ["--model", "uniad", "--model.backbone", "test_efficientnet", "--model.taps", "[0, 2, 4]",
              "--model.feature_size", "4", "--model.hidden_dim", "16", "--model.num_heads", "2",
              "--model.num_encoder_layers", "1", "--model.num_decoder_layers", "1", "--model.dim_feedforward", "32",
              "--model.neighbor_size", "3", "--model.pretrained", "false", "--trainer.max_epochs", "2"],
}
DEMO_CONFIGS = {"moeclip": ROOT / "configs" / "demo" / "moeclip.yaml",
                "anomalymoe": ROOT / "configs" / "demo" / "anomalymoe.yaml"}


def ddp_fit_then_single_test(tmp_path: Path, model_args: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    fit = run_cli("fit", *model_args, *COMMON, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                  "--test_after_fit", "true", "--trainer.default_root_dir", str(tmp_path / "ddp"), cwd=tmp_path,
                  env=ONE_THREAD)
    assert fit.returncode == 0, fit.stderr[-4000:]
    run = next((tmp_path / "ddp").glob("*/*/version_0"))
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert fit.stdout.count("Results written to") + fit.stderr.count("Results written to") == 1  # rank 0 only
    single = run_cli("test", *model_args, *COMMON, "--ckpt_path", str(last),
                     "--trainer.default_root_dir", str(tmp_path / "single"), cwd=tmp_path, env=ONE_THREAD)
    assert single.returncode == 0, single.stderr[-4000:]
    return (load_results(run / "test_results.csv"),
            load_results(next((tmp_path / "single").rglob("test_results.csv"))), last)


@pytest.mark.timeout(600)
def test_feature_distance_ddp_fit_equals_single_process_fit(tmp_path: Path):
    ddp_table, reloaded, last = ddp_fit_then_single_test(tmp_path, MODELS["feature_distance"])
    pd.testing.assert_frame_equal(ddp_table, reloaded, check_exact=True)
    # 22 training images over 2 ranks (11 + 11, batch 4: the last batch of each rank is short, none dropped).
    fit = run_cli("fit", *MODELS["feature_distance"], *COMMON, "--trainer.default_root_dir", str(tmp_path / "one"),
                  cwd=tmp_path, env=ONE_THREAD)
    assert fit.returncode == 0, fit.stderr[-3000:]
    one = torch.load(next((tmp_path / "one").rglob("last.ckpt")), weights_only=True)["state_dict"]
    two = torch.load(last, weights_only=True)["state_dict"]
    assert one["model.count"].item() == two["model.count"].item() == 22
    torch.testing.assert_close(two["model.feature_sum"], one["model.feature_sum"], rtol=1e-12, atol=1e-9)


@pytest.mark.timeout(900)
def test_uniad_ddp_fit_checkpoint_reloads_with_the_same_table(tmp_path: Path):
    ddp_table, reloaded, _ = ddp_fit_then_single_test(tmp_path, MODELS["uniad"])
    pd.testing.assert_frame_equal(ddp_table, reloaded, check_exact=True)


#: Overrides that shrink a demo config's data to a few images (fast suite); the full demo data runs in the slow one.
SHORT_DATA = {
    "moeclip": ["--data.init_args.train_data.init_args.num_test", "8",
                "--data.init_args.test_data.init_args.num_test", "5"],
    "anomalymoe": ["--data.init_args.category", "[carpet, pill]", "--data.init_args.num_train", "8",
                   "--data.init_args.num_test", "5"],
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(DEMO_CONFIGS))
def test_short_demo_config_ddp_fit_checkpoint_reloads_with_the_same_table(tmp_path: Path, name: str):
    """The same as below on a few images (uneven over 2 ranks): every model's DDP fit in the fast suite."""
    demo_config_ddp_fit_then_single_test(tmp_path, name, SHORT_DATA[name])


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", sorted(DEMO_CONFIGS))
def test_demo_config_ddp_fit_checkpoint_reloads_with_the_same_table(tmp_path: Path, name: str):
    demo_config_ddp_fit_then_single_test(tmp_path, name, [])


def demo_config_ddp_fit_then_single_test(tmp_path: Path, name: str, overrides: list[str]) -> None:
    config = DEMO_CONFIGS[name]
    assert config.is_file(), config
    args = ["--config", str(config), *overrides, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false"]
    fit = run_cli("fit", *args, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--test_after_fit", "true",
                  "--trainer.default_root_dir", str(tmp_path / "ddp"), cwd=ROOT, timeout=1700, env=ONE_THREAD)
    assert fit.returncode == 0, fit.stderr[-4000:]
    run = next((tmp_path / "ddp").glob("*/*/version_0"))
    single = run_cli("test", *args, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                     "--trainer.default_root_dir", str(tmp_path / "single"), cwd=ROOT, timeout=1700, env=ONE_THREAD)
    assert single.returncode == 0, single.stderr[-4000:]
    pd.testing.assert_frame_equal(load_results(run / "test_results.csv"),
                                  load_results(next((tmp_path / "single").rglob("test_results.csv"))),
                                  check_exact=True)
