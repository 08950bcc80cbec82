"""Export a trained detector's inference graph (frozen backbone + head → anomaly map + image score).

``anomaly-zoo export --ckpt_path ... --format onnx|torchscript`` (see :mod:`anomaly_zoo.export.cli`):
the graph traced from ``predict_anomaly`` (the per-image rule, as ``predict`` uses), the optional [0, 1]
normalisation stored in the checkpoint folded in, thresholds and preprocessing as metadata, and a parity
check against the PyTorch model.
"""

from anomaly_zoo.export.checkpoint import load_model
from anomaly_zoo.export.exporter import ExportResult, export_model
from anomaly_zoo.export.graph import InferenceGraph, export_metadata

__all__ = ["ExportResult", "InferenceGraph", "export_metadata", "export_model", "load_model"]
