"""TorchScript export (``torch.jit.trace``) with the metadata as an extra file, and a runner."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["METADATA_FILE", "export_torchscript", "run_torchscript"]

METADATA_FILE = "anomaly_zoo.json"


def export_torchscript(graph: torch.nn.Module, example: torch.Tensor, path: Path, metadata: str) -> str:
    # Tracing, not scripting: models' Python (timm features, dict outputs) is not TorchScript-compatible,
    # and the inference path of a fixed-size detector has no data-dependent control flow to lose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(graph, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: metadata})
    return "torch.jit.trace"


def run_torchscript(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    with torch.no_grad():
        anomaly_map, pred_score = module(images)
    return [anomaly_map.numpy(), pred_score.numpy()]
