"""Which imaging domain a dataset belongs to ("industrial" or "medical"), for models with domain rules.

MoECLIP, for instance, prompts and post-processes medical images differently. A DataModule declares its
domain with a ``DOMAIN`` class attribute; DataModules without one are industrial. Composite DataModules
answer for what they evaluate: ``cross_dataset`` for its ``test_data``, ``multi_dataset`` per qualified
category (``"bmad/Brain"`` -> the ``bmad`` part).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DOMAINS", "category_domain", "dataset_domain"]

DOMAINS = ("industrial", "medical")
_SEPARATOR = "/"  # multi_dataset's qualified names: "<dataset>/<category>"


def dataset_domain(datamodule: Any) -> str:
    """``datamodule.DOMAIN`` (an instance or a class), ``"industrial"`` when it declares none; for a
    cross-dataset DataModule, the domain of the data it tests on."""
    test_data = getattr(datamodule, "test_data", None)
    if test_data is not None and test_data is not datamodule:
        return dataset_domain(test_data)
    domain = getattr(datamodule, "DOMAIN", "industrial")
    if domain not in DOMAINS:
        name = datamodule.__name__ if isinstance(datamodule, type) else type(datamodule).__name__
        raise ValueError(f"{name}.DOMAIN must be one of {DOMAINS}, got {domain!r}")
    return domain


def category_domain(datamodule: Any, category: str) -> str:
    """The domain of one category as it appears in batches (qualified names pick their part)."""
    parts = getattr(datamodule, "datasets", None)
    if isinstance(parts, Mapping) and _SEPARATOR in category:
        name = category.split(_SEPARATOR, 1)[0]
        if name in parts:
            return dataset_domain(parts[name])
    return dataset_domain(datamodule)
