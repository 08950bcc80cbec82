"""Name → class registries for models and datamodules (the names users type on the CLI)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A small case-sensitive mapping from short names (``"uniad"``) to classes.

    ``populate`` names a module whose import registers every member; it is imported on the
    first lookup so ``MODELS["uniad"]`` works without importing the model packages first.
    """

    def __init__(self, kind: str, populate: str | None = None) -> None:
        self.kind = kind
        self._populate = populate
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} name '{name}' is already registered to {self._items[name]!r}")
            self._items[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def _load(self) -> None:
        if self._populate is not None:
            module, self._populate = self._populate, None
            importlib.import_module(module)

    def __getitem__(self, name: str) -> type[T]:
        self._load()
        if name not in self._items:
            raise KeyError(f"Unknown {self.kind} '{name}'. Known {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, type[T]]]:
        self._load()
        return sorted(self._items.items())

    def name_of(self, cls: type) -> str | None:
        """The registered name of ``cls`` (or of its registered base), if any."""
        self._load()
        for name, item in self._items.items():
            if item is cls:
                return name
        return None


MODELS: Registry = Registry("model", populate="anomaly_zoo.models")
DATAMODULES: Registry = Registry("datamodule", populate="anomaly_zoo.data")
