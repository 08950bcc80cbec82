"""Session-wide test settings: never touch a hub or the network, and cache generated data per session."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Synthetic data goes into a per-session cache, so tests never depend on a user's home directory."""
    if "ANOMALY_ZOO_TEST_KEEP_CACHE" not in os.environ:
        os.environ["ANOMALY_ZOO_CACHE"] = str(tmp_path_factory.mktemp("anomaly_zoo_cache"))


@pytest.fixture(autouse=True)
def _trainer_root_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Trainer built without ``default_root_dir`` writes into the test's tmp dir, not the checkout.

    With ``logger=False`` Lightning's log dir is the working directory, so test tables, report.html and
    routing statistics of in-process tests would otherwise land in the repository root.
    """
    import lightning.pytorch as pl

    original = pl.Trainer.__init__

    # wraps: LightningCLI reads the Trainer's options from its signature (``__wrapped__``); without it the
    # in-process CLI tests fail with "unknown option --trainer.fast_dev_run".
    @functools.wraps(original)
    def init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        kwargs.setdefault("default_root_dir", str(tmp_path))
        original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", init)
