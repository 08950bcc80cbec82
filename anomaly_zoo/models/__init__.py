"""The model registry: every model's name → its class, imported only when that model is used.

Importing this package is cheap: it declares the names in ``anomaly_zoo.registry.MODELS`` and imports no
model package, so start-up (``anomaly-zoo predict`` with one model's checkpoint) pays only for the model
it runs. ``from anomaly_zoo.models import UniAD`` still works (PEP 562 ``__getattr__``: imported on access).
"""

from __future__ import annotations

from anomaly_zoo.lazy_exports import lazy_exports
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
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
