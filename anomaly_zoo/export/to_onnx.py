"""ONNX export (``torch.onnx``, dynamic batch axis) with metadata, and an onnxruntime runner."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["export_onnx", "run_onnx"]

_MISSING = "ONNX export needs the 'export' extra: pip install 'anomaly-zoo[export]' (onnx, onnxruntime)."


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:
        from anomaly_zoo.export.exporter import ExportError

        raise ExportError(_MISSING) from err


ONNX_EXPORTERS = ("auto", "dynamo", "tracing")


def _stable_sort(self, stable=None, dim: int = -1, descending: bool = False):
    """``torch.sort(stable=True)`` as ONNX ``TopK`` over the whole axis (torch.onnx has no translation for it).

    Exact, ties included: ONNX specifies that of two equal elements TopK puts the lower index first — the
    stable order. (Routers use the stable sort so expert choice does not depend on the device.)
    """
    from onnxscript import opset18 as op

    k = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]), axis=0)
    values, indices = op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def _translations() -> dict:
    return {torch.ops.aten.sort.stable: _stable_sort}


def export_onnx(graph: torch.nn.Module, example: torch.Tensor, path: Path, metadata: str, opset: int | None,
                exporter: str = "auto", dynamic_batch: bool = True) -> str:
    """Write ``path``; returns which exporter produced it. Metadata goes into the model's ``metadata_props``.

    ``exporter``: ``dynamo`` (torch.export-based), ``tracing`` (TorchScript-based, older but handles
    models whose Python checks a tensor's value, e.g. "is this baseline fitted"), ``auto`` = dynamo, then
    tracing if dynamo fails.
    """
    onnx = _require("onnx")
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"ONNX exporter must be one of {ONNX_EXPORTERS}, got '{exporter}'.")
    names = {"input_names": ["images"], "output_names": ["anomaly_map", "pred_score"]}
    log = io.StringIO()
    try:
        if exporter == "tracing":
            raise RuntimeError("tracing exporter requested")
        # torch.export-based exporter: the maintained path. Its progress (and, on failure, the whole graph)
        # is printed: keep it for the error message only.
        batch = torch.export.Dim("batch", min=1, max=1024)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (example,), dynamo=True, custom_translation_table=_translations(),
                                        dynamic_shapes=({0: batch},) if dynamic_batch else None,
                                        opset_version=opset, external_data=False, **names)
        program.save(str(path), external_data=False)
        exporter = "torch.onnx dynamo exporter"
    except Exception as dynamo_error:  # noqa: BLE001 - any failure (e.g. a data-dependent branch): try tracing
        if exporter == "dynamo":
            raise RuntimeError(f"dynamo exporter: {short_error(dynamo_error)}") from dynamo_error
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = {"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "pred_score": {0: "batch"}}
                torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=opset or 17,
                                  dynamic_axes=axes if dynamic_batch else None, **names)
        except Exception as err:
            raise RuntimeError(f"dynamo exporter: {short_error(dynamo_error)}; tracing exporter: {short_error(err)}") from err
        exporter = "torch.onnx TorchScript-based exporter"
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "anomaly_zoo", metadata
    onnx.save(model, str(path))
    return exporter


def short_error(err: BaseException, limit: int = 400) -> str:
    """The informative line of a torch.onnx error (its messages run to pages: graph dumps, next steps)."""
    text = str(err)
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("(Refer")]
    summary = next((line for line in lines if line.startswith("<class")), lines[0] if lines else type(err).__name__)
    return summary[:limit]


def run_onnx(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    """(anomaly_map, pred_score) of the exported file on ``images``, by onnxruntime on CPU."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["anomaly_map", "pred_score"], {"images": images.numpy()})
