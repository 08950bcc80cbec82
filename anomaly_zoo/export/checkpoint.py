"""Rebuild any registered detector from a checkpoint, with every weight from the checkpoint (offline)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.export.runtime import not_a_checkpoint

__all__ = ["load_model"]

# Weight sources the checkpoint makes redundant (as the CLI's --ckpt_path): never fetched again.
_WEIGHTS_FROM_CHECKPOINT = {"pretrained": False, "backbone_weights": None, "official_checkpoint": None}


def _model_class(checkpoint: dict[str, Any], path: Path) -> type:
    class_path = (checkpoint.get("anomaly_zoo") or {}).get("model_class")
    class_path = class_path or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not class_path:
        raise DatasetError(f"Checkpoint '{path}' does not say which model it holds (written by another tool?).")
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The AnomalyModule of ``ckpt_path`` in eval mode, thresholds and preprocessing restored."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise DatasetError(f"Checkpoint '{path}' does not exist (check --ckpt_path).")
    exported = not_a_checkpoint(path)
    if exported:
        raise DatasetError(exported)
    # Our checkpoints hold tensors and plain data only (thresholds, preprocessing, hyper-parameters): load them
    # safely, never by unpickling arbitrary objects; mmap reads only what is used.
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for unreadable files
        raise DatasetError(f"Cannot read checkpoint '{path}' safely (weights_only): {err}") from err
    cls = _model_class(checkpoint, path)
    del checkpoint
    accepted = inspect.signature(cls.__init__).parameters
    overrides = {k: v for k, v in _WEIGHTS_FROM_CHECKPOINT.items() if k in accepted}
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True, **overrides)
    return model.eval()
