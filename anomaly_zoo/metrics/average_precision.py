"""Average precision (area under the step precision-recall curve) from ranked counts."""

from __future__ import annotations

import torch

from anomaly_zoo.metrics.curves import RankedCounts
from anomaly_zoo.metrics.validation import warn_undefined

__all__ = ["average_precision", "average_precision_error_bound"]


def average_precision(counts: RankedCounts, name: str = "AP") -> float:
    """AP = sum over operating points of (recall increase) * precision, as scikit-learn and torchmetrics.

    Returns NaN with a warning when there is no positive.
    """
    n_pos = counts.n_pos
    if n_pos == 0:
        return warn_undefined(name, "no anomalous sample")
    tp, fp = counts.cumulative()
    precision = tp.double() / (tp + fp).clamp_min(1).double()
    return float((counts.pos.double() * precision).sum()) / n_pos


def average_precision_error_bound(counts: RankedCounts) -> float:
    """Largest possible |binned AP - exact AP|.

    Inside a bin that adds ``pos`` positives, every exact operating point has precision between
    ``(tp0+1)/(tp0+1+fp1)`` and ``tp1/(tp1+fp0)`` (0/1 = before/after the bin); so does the binned one.
    """
    if counts.exact or counts.n_pos == 0:
        return 0.0
    tp1, fp1 = counts.cumulative()
    tp0, fp0 = tp1 - counts.pos, fp1 - counts.neg
    has_pos = counts.pos > 0
    hi = tp1.double() / (tp1 + fp0).clamp_min(1).double()
    lo = (tp0 + 1).double() / (tp0 + 1 + fp1).double()
    spread = torch.where(has_pos, hi - lo, torch.zeros_like(hi)).clamp_min(0)
    return float((counts.pos.double() * spread).sum()) / counts.n_pos
