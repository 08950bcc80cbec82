"""Name → class registries for models and datamodules (the names users type on the CLI).

Entries are lazy: a package declares ``name → "module:Class"`` (cheap) and the module is imported the first
time the class itself is needed, so ``anomaly-zoo predict`` with a UniAD checkpoint never imports
MoECLIP's open_clip / peft or AnomalyMoE's extra dependencies. Listing names needs no import at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A small case-sensitive mapping from short names (``"uniad"``) to classes.

    ``populate`` names a module whose import declares (or registers) every member; it is imported on the
    first lookup, so ``MODELS["uniad"]`` works without importing the model packages first.
    ``declare(name, "pkg.module:Class")`` adds a lazy entry, resolved on first use; the class's own
    ``@register(name)`` decorator then runs as its module is imported.
    """

    def __init__(self, kind: str, populate: str | None = None) -> None:
        self.kind = kind
        self._populate = populate
        self._items: dict[str, type[T]] = {}
        self._targets: dict[str, str] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} name '{name}' is already registered to {self._items[name]!r}")
            target = self._targets.get(name)
            if target is not None and target != _target_of(cls):
                raise ValueError(f"{self.kind} name '{name}' is declared as {target}, not {_target_of(cls)}")
            self._items[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def declare(self, name: str, target: str) -> None:
        """A lazy entry: ``target`` is ``"module:Class"``, imported when ``self[name]`` is first needed."""
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"{self.kind} '{name}': declare 'package.module:Class', got '{target}'")
        if self._targets.get(name, target) != target:
            raise ValueError(f"{self.kind} name '{name}' is already declared as {self._targets[name]}")
        self._targets[name] = target

    def _load(self) -> None:
        if self._populate is not None:
            module, self._populate = self._populate, None
            importlib.import_module(module)

    def __getitem__(self, name: str) -> type[T]:
        self._load()
        if name not in self._items:
            if name not in self._targets:
                raise KeyError(f"Unknown {self.kind} '{name}'. Known {self.kind}s: {', '.join(self.names())}")
            module, _, attr = self._targets[name].partition(":")
            cls = getattr(importlib.import_module(module), attr)  # its @register(name) runs on import
            self._items.setdefault(name, cls)
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items or name in self._targets

    def names(self) -> list[str]:
        """Every name, without importing any member."""
        self._load()
        return sorted({*self._items, *self._targets})

    def class_path(self, name: str) -> str:
        """``"package.module.Class"`` of ``name`` without importing it (what jsonargparse's class_path takes)."""
        self._load()
        if name in self._items:
            return _target_of(self._items[name]).replace(":", ".")
        if name not in self._targets:
            raise KeyError(f"Unknown {self.kind} '{name}'. Known {self.kind}s: {', '.join(self.names())}")
        return self._targets[name].replace(":", ".")

    def class_name(self, name: str) -> str:
        """The class's own name (``UniAD`` for ``uniad``), without importing it."""
        return self.class_path(name).rpartition(".")[2]

    def items(self) -> list[tuple[str, type[T]]]:
        """Every (name, class): imports every member."""
        return [(name, self[name]) for name in self.names()]

    def load_all(self) -> None:
        """Import every member (``--help`` lists the subclasses Python knows)."""
        self.items()

    def name_of(self, cls: type) -> str | None:
        """The registered name of ``cls`` (or of its registered base), if any."""
        self._load()
        for name, item in self._items.items():
            if item is cls:
                return name
        target = _target_of(cls)
        return next((name for name, t in self._targets.items() if t == target), None)


def _target_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


MODELS: Registry = Registry("model", populate="anomaly_zoo.models")
DATAMODULES: Registry = Registry("datamodule", populate="anomaly_zoo.data.catalog")
