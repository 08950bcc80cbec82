"""A fast start for the ``anomaly-zoo`` command: third-party optional imports it never uses are skipped or deferred.

Imported for its effect as the first import of :mod:`anomaly_zoo.cli`, before Lightning (the library, used from
Python, is untouched: nothing here runs unless the CLI module is imported). Measured on the shared 2-core CPU
(best of 3, ``docs/deploy.md``), these imports were most of a single-image ``predict``:

- **torchmetrics' optional backends.** Lightning imports torchmetrics whenever it is itself imported
  (``lightning.fabric.utilities.imports`` calls ``compare_version("torchmetrics", ...)``, which imports the
  package), and ``torchmetrics/__init__`` imports every metric domain; each imports its optional backend when
  the distribution is installed: ``transformers`` (BERTScore / InfoLM / CLIPScore; installed here because
  peft needs it), ``matplotlib.pyplot`` (``Metric.plot``) and ``scipy.signal`` (a compatibility patch for an
  audio package). anomaly-zoo only subclasses ``torchmetrics.Metric``, so torchmetrics is imported here with
  those three distributions looking absent *to torchmetrics' availability checks* (lightning_utilities'
  ``RequirementCache`` / ``package_available``) for the duration of that one import. Afterwards every check
  answers truthfully again, and the packages themselves import normally (MoECLIP's peft imports
  transformers as before). What changes: in this process torchmetrics' text metrics that need transformers,
  ``Metric.plot()`` and its scipy-based metrics say their package is missing; no anomaly-zoo code uses them.
- **wandb, imported by timm**: ``timm.utils.summary`` (imported by every ``import timm``) does
  ``try: import wandb / except ImportError: pass``, for its own training script's ``update_summary(...,
  log_wandb=True)``. While that one module executes, ``import wandb`` raises ImportError, which it catches;
  everywhere else wandb imports normally (Lightning's ``WandbLogger`` works unchanged). A deferred import
  (``importlib.util.LazyLoader``) cannot do this: a later ``import wandb`` statement reads the module's
  ``__spec__``, which executes it at once.

``ANOMALY_ZOO_EAGER_IMPORTS=1`` turns both off. Either one also steps aside by itself when its module is
already imported, or when lightning_utilities no longer has the functions patched here (the start is then
only slower).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Set to 1 to import everything eagerly, as the libraries do on their own.
EAGER_ENV = "ANOMALY_ZOO_EAGER_IMPORTS"
#: Distributions torchmetrics' import-time availability checks are told are absent (see the module docstring).
TORCHMETRICS_SKIPPED_BACKENDS = ("transformers", "matplotlib", "scipy")
#: importer module → the optional module it tries to import and that it is not given (see the docstring).
SKIPPED_OPTIONAL_IMPORTS = {"timm.utils.summary": "wandb"}

#: The distributions hidden right now (only while ``import torchmetrics`` runs; empty otherwise).
_hidden: frozenset[str] = frozenset()


@contextmanager
def _hidden_from_availability_checks(names: tuple[str, ...]) -> Iterator[bool]:
    """lightning_utilities' checks answer "not installed" for ``names`` inside the block (True if patched)."""
    global _hidden
    try:
        from lightning_utilities.core import imports as checks
    except ImportError:
        yield False
        return
    originals = {name: getattr(checks, name, None) for name in ("_version", "package_available")}
    module_available = getattr(checks, "module_available", None)
    if None in originals.values() or not hasattr(module_available, "cache_clear"):
        yield False
        return
    from importlib.metadata import PackageNotFoundError

    def version(name: str) -> str:
        if name in _hidden:
            raise PackageNotFoundError(name)
        return originals["_version"](name)

    def package_available(name: str) -> bool:
        # Modules bind this function by name at their import (torchmetrics does): it answers truthfully
        # once the block ends.
        return False if name in _hidden else originals["package_available"](name)

    _hidden = frozenset(names)
    checks._version, checks.package_available = version, package_available
    try:
        yield True
    finally:
        _hidden = frozenset()
        checks._version, checks.package_available = originals["_version"], originals["package_available"]
        module_available.cache_clear()  # an answer cached while hidden must not outlive the block


def import_torchmetrics_without_optional_backends() -> bool:
    """Import torchmetrics with :data:`TORCHMETRICS_SKIPPED_BACKENDS` skipped; False if it did nothing."""
    if "torchmetrics" in sys.modules or os.environ.get(EAGER_ENV):
        return False
    with _hidden_from_availability_checks(TORCHMETRICS_SKIPPED_BACKENDS) as patched:
        import torchmetrics  # noqa: F401
    return patched


class SkipOptionalImport(importlib.abc.MetaPathFinder):
    """While ``importer`` executes, ``import optional`` raises ModuleNotFoundError (``importer`` catches it).

    Finds nothing itself: for ``importer`` it wraps the spec the other finders return; it removes itself
    once ``importer`` has run.
    """

    def __init__(self, importer: str, optional: str) -> None:
        self.importer, self.optional = importer, optional
        self.active = False

    def find_spec(self, name, path=None, target=None):
        if name == self.optional and self.active:
            raise ModuleNotFoundError(f"{name} is not imported by {self.importer} here (anomaly_zoo/startup.py)",
                                      name=name)
        if name != self.importer:
            return None
        _remove_finder(self)  # first: the other finders, then this one is gone for good
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module) -> None:
            self.active = True
            sys.meta_path.insert(0, self)
            try:
                execute(module)
            finally:
                self.active = False
                _remove_finder(self)

        loader.exec_module = exec_module  # this spec's own loader object: no other module is affected
        return spec


def _remove_finder(finder) -> None:
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)


def skip_optional_import(importer: str, optional: str) -> bool:
    """Install a :class:`SkipOptionalImport`; False if either module is already imported or it is switched off."""
    if importer in sys.modules or optional in sys.modules or os.environ.get(EAGER_ENV):
        return False
    sys.meta_path.insert(0, SkipOptionalImport(importer, optional))
    return True


def fast_start() -> None:
    import_torchmetrics_without_optional_backends()
    for importer, optional in SKIPPED_OPTIONAL_IMPORTS.items():
        skip_optional_import(importer, optional)


fast_start()
