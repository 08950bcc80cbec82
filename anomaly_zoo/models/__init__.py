"""The model registry: every model's name → its class, imported only when that model is used.

Importing this package is cheap: it declares the names in ``anomaly_zoo.registry.MODELS`` and imports no
model package, so start-up (``anomaly-zoo predict`` with one model's checkpoint) pays only for the model
it runs. ``from anomaly_zoo.models import UniAD`` still works (PEP 562 ``__getattr__``: imported on access).
"""

from __future__ import annotations

import importlib
from typing import Any

from anomaly_zoo.registry import MODELS

#: registry name → "module:Class"; a new model adds one line here (its class keeps ``@MODELS.register``).
MODEL_CLASSES = {
    "anomalymoe": "anomaly_zoo.models.anomalymoe.lightning:AnomalyMoE",
    "feature_distance": "anomaly_zoo.models.feature_distance.lightning:FeatureDistance",
    "moeclip": "anomaly_zoo.models.moeclip.lightning:MoECLIP",
    "uniad": "anomaly_zoo.models.uniad.lightning:UniAD",
}
for _name, _target in MODEL_CLASSES.items():
    MODELS.declare(_name, _target)

_EXPORTS = {target.rpartition(":")[2]: target for target in MODEL_CLASSES.values()}
_EXPORTS["AnomalyModule"] = "anomaly_zoo.models.base:AnomalyModule"

__all__ = ["AnomalyModule", *sorted(name for name in _EXPORTS if name != "AnomalyModule")]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anomaly_zoo.models' has no attribute '{name}'")
    module, _, attr = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
