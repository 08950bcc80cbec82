"""Session-wide test settings: never touch a hub or the network, and cache generated data per session."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Synthetic data goes into a per-session cache, so tests never depend on a user's home directory."""
    if "ANOMALY_ZOO_TEST_KEEP_CACHE" not in os.environ:
        os.environ["ANOMALY_ZOO_CACHE"] = str(tmp_path_factory.mktemp("anomaly_zoo_cache"))
