"""Export + parity: write the inference graph, run the written file, compare it with the PyTorch model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_zoo.export.graph import InferenceGraph, export_metadata, metadata_json

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportResult", "export_model", "example_images"]

EXPORT_FORMATS = ("onnx", "torchscript")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(RuntimeError):
    """The model cannot be exported to this format, or the exported graph disagrees with PyTorch."""


@dataclass
class ExportResult:
    path: Path
    format: str
    exporter: str
    max_map_diff: float
    max_score_diff: float
    tolerance: float
    metadata: dict[str, Any]

    def summary(self) -> str:
        return (f"Exported {self.metadata['model']} to {self.path} ({self.format}, {self.exporter}); parity on "
                f"{self.metadata['parity']['batch']} images vs PyTorch: max |Δ map| = {self.max_map_diff:.3g}, "
                f"max |Δ score| = {self.max_score_diff:.3g} (tolerance {self.tolerance:g}).")


def example_images(preprocessing: dict[str, Any] | None, shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """Seeded random RGB pictures in [0, 255], preprocessed like the model's inputs (float32 NCHW)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(shape, generator=generator)
    mean = (preprocessing or {}).get("mean") or [0.0, 0.0, 0.0]
    std = (preprocessing or {}).get("std") or [1.0, 1.0, 1.0]
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _input_shape(model: Any, image_size: tuple[int, int] | None, batch: int) -> tuple[int, int, int, int]:
    size = image_size or ((getattr(model, "preprocessing", None) or {}).get("image_size"))
    if not size:
        raise ExportError("The checkpoint does not record an input size (native-size data, or an old checkpoint): "
                          "pass --image_size H W.")
    return (batch, 3, int(size[0]), int(size[1]))


def export_model(
    model: Any,
    export_format: str,
    output: str | Path,
    image_size: tuple[int, int] | None = None,
    tolerance: float = 1e-4,
    opset: int | None = None,
    parity_batch: int = 3,
    onnx_exporter: str = "auto",
    batch_size: int | None = None,
) -> ExportResult:
    """Export ``model`` (an AnomalyModule, eval mode) and check the written file against it.

    With ``batch_size=None`` the batch axis is dynamic: the graph is traced at batch 2 and checked at
    ``parity_batch`` fresh images (so a baked-in batch size or a traced constant shows up as a parity
    failure). An int fixes the batch size (traced and checked at it), for models whose Python builds
    batch-sized constants (e.g. per-image text prompts). Raises :class:`ExportError` when the model says
    it cannot be exported or the parity exceeds ``tolerance``.
    """
    if export_format not in EXPORT_FORMATS:
        raise ExportError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got '{export_format}'.")
    reason = model.export_limitations(export_format)
    if reason:
        raise ExportError(f"{type(model).__name__} cannot be exported to {export_format}: {reason}")
    model = model.eval().cpu()
    path = Path(output)
    if path.suffix == "":
        path = path.with_suffix(_SUFFIX[export_format])
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = InferenceGraph(model).eval()
    # Traced at batch 2: torch.export specialises a dimension of size 1 to a constant.
    trace_batch, parity_batch = (2, parity_batch) if batch_size is None else (batch_size, batch_size)
    example = example_images(model.preprocessing, _input_shape(model, image_size, trace_batch), seed=0)
    check = example_images(model.preprocessing, _input_shape(model, image_size, parity_batch), seed=1)
    metadata = export_metadata(model, graph, tuple(example.shape), dynamic_batch=batch_size is None)
    # no_grad, not inference_mode: tensors a model caches here (e.g. text embeddings) must stay usable by the
    # tracers, which refuse inference tensors.
    with torch.no_grad():
        reference = [t.numpy() for t in graph(check)]
    # Lightning's `trainer` property raises outside a Trainer; tracers probe every attribute of the module.
    scripting, model._jit_is_scripting = model._jit_is_scripting, True
    # nn.MultiheadAttention's fused inference kernel has no ONNX counterpart: export the plain ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    graph.exporting = True
    try:
        try:
            if export_format == "onnx":
                from anomaly_zoo.export.to_onnx import export_onnx, run_onnx

                exporter = export_onnx(graph, example, path, metadata_json(metadata), opset, onnx_exporter,
                                       dynamic_batch=batch_size is None)
                exported = run_onnx(path, check)
            else:
                from anomaly_zoo.export.to_torchscript import export_torchscript, run_torchscript

                exporter = export_torchscript(graph, example, path, metadata_json(metadata))
                exported = run_torchscript(path, check)
        except ExportError:
            raise
        except Exception as err:  # noqa: BLE001 - the tracers raise anything: one line naming the cause
            from anomaly_zoo.export.to_onnx import short_error

            hint = "" if batch_size is not None else " (a model that builds batch-sized constants: try --batch_size N)"
            raise ExportError(f"{type(model).__name__} could not be exported to {export_format}: "
                              f"{short_error(err)}{hint}") from err
    finally:
        model._jit_is_scripting = scripting
        torch.backends.mha.set_fastpath_enabled(fastpath)
        graph.exporting = False
    map_diff = float(np.abs(exported[0] - reference[0]).max())
    score_diff = float(np.abs(exported[1].reshape(-1) - reference[1].reshape(-1)).max())
    metadata["parity"] = {"batch": parity_batch, "max_abs_map_diff": map_diff, "max_abs_score_diff": score_diff,
                          "tolerance": tolerance}
    Path(str(path) + ".json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    result = ExportResult(path, export_format, exporter, map_diff, score_diff, tolerance, metadata)
    if exported[0].shape != reference[0].shape or not (map_diff <= tolerance and score_diff <= tolerance):
        raise ExportError(f"parity check failed: {result.summary()} Shapes {exported[0].shape} vs "
                          f"{reference[0].shape}.")
    return result
