"""F1-max: the best F1 score over all thresholds, and the threshold that reaches it."""

from __future__ import annotations

from anomaly_zoo.metrics.curves import RankedCounts
from anomaly_zoo.metrics.validation import warn_undefined

__all__ = ["f1_max", "f1_max_error_bound"]


def f1_max(counts: RankedCounts, name: str = "F1-max") -> tuple[float, float]:
    """Return ``(best F1, threshold)``; predicting "anomalous" for scores ``>= threshold`` reaches it.

    F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P). The highest threshold wins ties. NaN (with a warning)
    when there is no positive.
    """
    n_pos = counts.n_pos
    if n_pos == 0:
        nan = warn_undefined(name, "no anomalous sample")
        return nan, nan
    tp, fp = counts.cumulative()
    f1 = 2.0 * tp.double() / (tp + fp + n_pos).double()
    best = int(f1.argmax())
    return float(f1[best]), float(counts.thresholds[best])


def f1_max_error_bound(counts: RankedCounts) -> float:
    """Largest possible (exact F1-max - binned F1-max); binned F1-max never exceeds the exact one.

    Any exact operating point inside a bin has ``tp <= tp1`` and ``fp >= fp0``, so F1 <= 2 tp1 / (tp1 + fp0 + P).
    """
    if counts.exact or counts.n_pos == 0:
        return 0.0
    n_pos = counts.n_pos
    tp1, fp1 = counts.cumulative()
    fp0 = fp1 - counts.neg
    upper = float((2.0 * tp1.double() / (tp1 + fp0 + n_pos).double()).max())
    achieved = float((2.0 * tp1.double() / (tp1 + fp1 + n_pos).double()).max())
    return max(upper - achieved, 0.0)
