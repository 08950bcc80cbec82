"""DataModules and the data helpers they share.

Importing this package is cheap (no Lightning, no torch): the registry imports
:mod:`anomaly_zoo.data.catalog`, which registers every DataModule, on its first lookup, and
``from anomaly_zoo.data import AnomalyDataModule`` still works (PEP 562 ``__getattr__``: imported on access).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnomalyDataModule": "anomaly_zoo.data.base",
    "AnomalyDataset": "anomaly_zoo.data.dataset",
    "Sample": "anomaly_zoo.data.dataset",
    "DatasetError": "anomaly_zoo.data.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anomaly_zoo.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
