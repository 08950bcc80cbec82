"""Every dataset is registered under the name users type, and documents its directory tree."""

from __future__ import annotations

import importlib

import pytest

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.registry import DATAMODULES

NAMES = {
    "mvtec_ad": ("mvtec_ad", "MVTecAD", 15),
    "visa": ("visa", "VisA", 12),
    "mvtec_loco": ("mvtec_loco", "MVTecLOCO", 5),
    "btad": ("btad", "BTAD", 3),
    "mpdd": ("mpdd", "MPDD", 6),
    "folder": ("folder", "Folder", 0),
    "cross_dataset": ("cross_dataset", "CrossDataset", 0),
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_registered_with_tree_docstring(name):
    module, cls_name, n_categories = NAMES[name]
    cls = getattr(importlib.import_module(f"anomaly_zoo.data.{module}"), cls_name)
    assert DATAMODULES[name] is cls and issubclass(cls, AnomalyDataModule)
    assert len(cls.CATEGORIES) == n_categories == len(set(cls.CATEGORIES))
    assert "──" in cls.__doc__  # draws the expected directory tree
