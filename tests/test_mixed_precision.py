"""Mixed precision (``--trainer.precision bf16-mixed``) for every model, and metrics that never accumulate in it.

Each demo config (uniad, feature_distance, moeclip, anomalymoe) runs one fit + validation + test step through
the CLI under bf16 autocast (on CPU Lightning turns ``16-mixed`` into ``bf16-mixed``; on a GPU both work). The
maps reach the metrics inside autocast (asserted) and every metric state stays int64 / float32 / float64
(asserted after each update). The metrics themselves, fed bfloat16 maps and scores, keep float32 maps and
float64 scores and give exactly the table of the same values in float32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from anomaly_zoo.metrics import AnomalyMetrics
from anomaly_zoo.models.base import AnomalyModule
from tests.metrics.metrics_testdata import synthetic_set
from tests.test_configs import _fake_data, _weights_off, main_in_process

ROOT = Path(__file__).resolve().parents[1]
ACCUMULATING = {torch.int64, torch.uint8, torch.float32, torch.float64}


def state_dtypes(metric: torch.nn.Module) -> set[tuple[str, str, torch.dtype]]:
    """(metric class, state name, dtype) of every state of ``metric`` and its children."""
    found = set()
    for module in metric.modules():
        for name in getattr(module, "_defaults", {}):
            value = getattr(module, name)
            for tensor in value if isinstance(value, list) else [value]:
                found.add((type(module).__name__, name, tensor.dtype))
    return found


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_metrics_fed_bf16_keep_full_precision_states_and_the_float32_table(mode: str):
    maps, masks, labels = synthetic_set(n=8, seed=3)
    low = maps.to(torch.bfloat16)
    tables = {}
    for dtype in (torch.bfloat16, torch.float32):
        metrics = AnomalyMetrics(["a"], pixel_mode=mode)
        given = low.to(dtype)  # the same values: bf16 -> float32 is exact
        for start in range(0, 8, 3):
            part = slice(start, start + 3)
            metrics.update({"anomaly_map": given[part].unsqueeze(1), "pred_score": given[part].flatten(1).amax(1)},
                           {"mask": masks[part].unsqueeze(1), "label": labels[part], "category": "a",
                            "index": torch.arange(8)[part]})
        dtypes = state_dtypes(metrics)
        assert {d for *_, d in dtypes} <= ACCUMULATING, dtypes
        assert ("ImageMetrics", "scores", torch.float64) in dtypes
        if mode == "exact":
            assert ("PixelMetrics", "maps", torch.float32) in dtypes
        else:
            assert {("PixelMetrics", "hist", torch.int64), ("PixelMetrics", "tmin", torch.float64)} <= dtypes
        tables[dtype] = metrics.compute()
    assert tables[torch.bfloat16].equals(tables[torch.float32])


def _run_demo_bf16(name: str, tmp_path: Path, monkeypatch) -> list[tuple[torch.dtype, bool]]:
    data = yaml.safe_load((ROOT / "configs" / "demo" / f"{name}.yaml").read_text())
    _weights_off(data["model"])
    _fake_data(data["data"], tmp_path)  # the synthetic sets made small (tests/test_configs.py)
    data["trainer"].pop("callbacks", None)
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data))
    seen: list[tuple[torch.dtype, bool]] = []
    states: set = set()
    checked_map, update = AnomalyModule._checked_map, AnomalyMetrics.update

    def recording_map(self, anomaly_map, batch):
        seen.append((anomaly_map.dtype, torch.is_autocast_enabled("cpu")))
        return checked_map(self, anomaly_map, batch)

    def recording_update(self, output, batch):
        update(self, output, batch)
        states.update(state_dtypes(self))

    monkeypatch.setattr(AnomalyModule, "_checked_map", recording_map)
    monkeypatch.setattr(AnomalyMetrics, "update", recording_update)
    code = main_in_process(["fit", "--config", str(config), "--trainer.fast_dev_run", "true",
                            "--test_after_fit", "true", "--trainer.accelerator", "cpu",
                            "--trainer.precision", "bf16-mixed", "--trainer.enable_progress_bar", "false",
                            "--trainer.default_root_dir", str(tmp_path / "out")], monkeypatch, cwd=tmp_path)
    assert code in (None, 0), f"{name} failed under bf16-mixed (exit {code}); see stderr"
    # Every map under bf16 autocast: test steps and the threshold calibration after fit (predict's precision).
    assert seen and all(autocast for _, autocast in seen), seen
    if name != "feature_distance":  # its float32 statistics make float32 maps; the others' arrive as bf16
        assert any(dtype == torch.bfloat16 for dtype, _ in seen), seen
    assert states and {d for *_, d in states} <= ACCUMULATING, states
    assert ("ImageMetrics", "scores", torch.float64) in states
    return seen


# 2-6 s each on the shared 2-core CPU (fast_dev_run on the shrunk synthetic sets).
@pytest.mark.parametrize("name", ["feature_distance", "uniad", "moeclip", "anomalymoe"])
def test_demo_config_fits_and_tests_under_bf16_mixed(name: str, tmp_path: Path, monkeypatch):
    _run_demo_bf16(name, tmp_path, monkeypatch)
