"""DataModules and the data helpers they share.

Importing this package is cheap (no Lightning, no torch): the registry imports
:mod:`anomaly_zoo.data.catalog`, which registers every DataModule, on its first lookup, and
``from anomaly_zoo.data import AnomalyDataModule`` still works (PEP 562 ``__getattr__``: imported on access).
"""

from __future__ import annotations

from anomaly_zoo.lazy_exports import lazy_exports

_EXPORTS = {
    "AnomalyDataModule": "anomaly_zoo.data.base",
    "AnomalyDataset": "anomaly_zoo.data.dataset",
    "Sample": "anomaly_zoo.data.dataset",
    "DatasetError": "anomaly_zoo.data.errors",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
