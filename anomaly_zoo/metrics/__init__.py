"""Evaluation suite shared by every detector: exact or streaming, DDP-correct, raw scores never squashed.

Image metrics: :class:`ImageAUROC`, :class:`ImageAP`, :class:`ImageF1Max` (all at once: :class:`ImageMetrics`).
Pixel metrics: :class:`PixelAUROC`, :class:`PixelAP`, :class:`PixelF1Max`, :class:`AUPRO` (all at once:
:class:`PixelMetrics`), each with ``mode="exact"`` (MVTec AD reference numbers) or ``mode="streaming"``
(fixed memory, documented error bound). Per-category tables: :class:`AnomalyMetrics`.
"""

from anomaly_zoo.metrics.collection import AnomalyMetrics
from anomaly_zoo.metrics.curves import RankedCounts, rank_ties, trapezoid
from anomaly_zoo.metrics.image import ImageAP, ImageAUROC, ImageF1Max, ImageMetrics
from anomaly_zoo.metrics.pixel import AUPRO, DEFAULT_NUM_BINS, PixelAP, PixelAUROC, PixelF1Max, PixelMetrics
from anomaly_zoo.metrics.pro import aupro_score, pro_curve
from anomaly_zoo.metrics.table import COLUMNS, format_results_table, load_results, save_results
from anomaly_zoo.metrics.validation import MetricUndefinedWarning

__all__ = [
    "AUPRO",
    "COLUMNS",
    "DEFAULT_NUM_BINS",
    "AnomalyMetrics",
    "ImageAP",
    "ImageAUROC",
    "ImageF1Max",
    "ImageMetrics",
    "MetricUndefinedWarning",
    "PixelAP",
    "PixelAUROC",
    "PixelF1Max",
    "PixelMetrics",
    "RankedCounts",
    "aupro_score",
    "format_results_table",
    "load_results",
    "pro_curve",
    "rank_ties",
    "save_results",
    "trapezoid",
]
