"""Export a trained detector's inference graph (frozen backbone + head → anomaly map + image score).

``anomaly-zoo export --ckpt_path ... --format onnx|torchscript`` (see :mod:`anomaly_zoo.export.cli`):
the graph traced from ``predict_anomaly`` (the per-image rule, as ``predict`` uses), the optional [0, 1]
normalisation stored in the checkpoint folded in, thresholds and preprocessing as metadata, and a parity
check against the PyTorch model.

Lazy (PEP 562): :mod:`anomaly_zoo.export.runtime` runs an exported file without torch, so importing this
package must not import torch; the names below are imported on first access.
"""

from __future__ import annotations

from anomaly_zoo.lazy_exports import lazy_exports

_EXPORTS = {
    "ExportResult": "anomaly_zoo.export.exporter", "export_model": "anomaly_zoo.export.exporter",
    "InferenceGraph": "anomaly_zoo.export.graph", "export_metadata": "anomaly_zoo.export.graph",
    "load_model": "anomaly_zoo.export.checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
