"""Area under the ROC curve from ranked counts, and its binning error bound."""

from __future__ import annotations

import torch

from anomaly_zoo.metrics.curves import RankedCounts
from anomaly_zoo.metrics.validation import warn_undefined

__all__ = ["auroc", "auroc_error_bound"]


def auroc(counts: RankedCounts, name: str = "AUROC") -> float:
    """Trapezoidal AUROC with ties merged (= Mann-Whitney U / (P*N), ties counting one half).

    Computed as one integer numerator over ``2*P*N``, so it is exact up to a single float64 rounding.
    Returns NaN with a :class:`MetricUndefinedWarning` when there are no positives or no negatives.
    """
    n_pos, n_neg = counts.n_pos, counts.n_neg
    if n_pos == 0 or n_neg == 0:
        return warn_undefined(name, f"{n_pos} anomalous and {n_neg} normal samples; both classes are needed")
    tp_before = torch.cumsum(counts.pos, 0) - counts.pos
    # Each negative in group g is outranked by the positives before g and ties with half of those in g.
    if 2 * n_pos * n_neg < 2**62:
        numerator = int((counts.neg * (2 * tp_before + counts.pos)).sum())
    else:  # beyond int64: float64 is still accurate to ~1e-16 relative
        numerator = float((counts.neg.double() * (2 * tp_before + counts.pos).double()).sum())
    return numerator / (2.0 * n_pos * n_neg)


def auroc_error_bound(counts: RankedCounts) -> float:
    """Largest possible |binned AUROC - exact AUROC|: sum over groups of pos*neg / (2*P*N).

    Pairs (positive, negative) that share a bin are counted as ties (1/2); exactly, each is worth 0 or 1
    (or 1/2 if truly tied). Zero for exact ranked counts.
    """
    if counts.exact or counts.n_pos == 0 or counts.n_neg == 0:
        return 0.0
    mixed = (counts.pos.double() * counts.neg.double()).sum()
    return float(mixed) / (2.0 * counts.n_pos * counts.n_neg)
