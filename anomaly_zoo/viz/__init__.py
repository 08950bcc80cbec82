"""Pictures for people: overlays, the prediction writer, the HTML report.

Imported lazily (PEP 562): :mod:`anomaly_zoo.viz.heatmap` and :mod:`anomaly_zoo.viz.outputs` need only numpy,
OpenCV and PIL (the torch-free ``predict`` of exported models uses them); ``PredictionWriter`` needs Lightning.
"""

from __future__ import annotations

from anomaly_zoo.lazy_exports import lazy_exports

_EXPORTS = {"PredictionWriter": "anomaly_zoo.viz.writer", "overlay_heatmap": "anomaly_zoo.viz.heatmap"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
