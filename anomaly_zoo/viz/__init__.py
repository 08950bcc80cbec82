"""Pictures for people: overlays, the prediction writer, the HTML report.

Imported lazily (PEP 562): :mod:`anomaly_zoo.viz.heatmap` and :mod:`anomaly_zoo.viz.outputs` need only numpy,
OpenCV and PIL (the torch-free ``predict`` of exported models uses them); ``PredictionWriter`` needs Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"PredictionWriter": "anomaly_zoo.viz.writer", "overlay_heatmap": "anomaly_zoo.viz.heatmap"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anomaly_zoo.viz' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
