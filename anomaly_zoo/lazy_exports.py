"""PEP 562 lazy attributes for the package ``__init__`` files: names imported on first access.

The packages whose modules need torch / Lightning (``models``, ``data``, ``export``, ``viz``) still offer
``from anomaly_zoo.data import AnomalyDataModule``, while importing the package itself stays cheap — so the
registry can list names without importing models, and an exported model predicts without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str]) -> tuple[Callable[[str], Any],
                                                                               Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package: ``exports`` maps a name to ``"module"`` or ``"module:attr"``.

    Usage in an ``__init__.py``: ``__getattr__, __dir__ = lazy_exports(globals(), {...})``. A resolved name is
    stored in the package's namespace, so later lookups do not come back here.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        module, _, attr = exports[name].partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
