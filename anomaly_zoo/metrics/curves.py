"""Ranked counts: the one intermediate every curve metric is computed from.

Scores are grouped into operating points in descending order. In exact mode a group is a set of equal
scores (ties merged, as in the MVTec AD reference and scikit-learn); in streaming mode it is a histogram bin.
Every metric (AUROC, AP, F1-max, PRO/AUPRO) then only needs cumulative sums over groups, and the
streaming error bounds only need the per-group counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["RankedCounts", "rank_ties", "sort_values", "trapezoid"]


@dataclass(frozen=True)
class RankedCounts:
    """Per-group counts, groups in descending score order.

    Operating point ``g`` predicts "anomalous" for every score ``>= thresholds[g]``.
    ``pro`` holds, per group, the summed PRO weight of its defect pixels (``1/|region|`` each), scaled
    by ``pro_scale`` (1.0 for float64 sums, ``2**40`` for the streaming fixed-point integers).
    ``exact`` is True when groups are true ties, i.e. there is no binning error.
    """

    thresholds: Tensor  # float64 (G,)
    neg: Tensor  # int64 (G,)
    pos: Tensor  # int64 (G,)
    pro: Tensor | None = None  # (G,) float64 or int64
    pro_scale: float = 1.0
    n_regions: int = 0
    exact: bool = True

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())

    def cumulative(self) -> tuple[Tensor, Tensor]:
        """Cumulative (true positives, false positives) at each operating point, int64."""
        return torch.cumsum(self.pos, 0), torch.cumsum(self.neg, 0)


def sort_values(x: Tensor) -> Tensor:
    """Ascending sort of a 1-D tensor's values (no indices).

    On CPU numpy's vectorised sort is ~20x faster than ``torch.sort`` (87 ms vs 1.7 s for 13 M float32
    on 2 cores), and we never need the permutation.
    """
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy()))
    return torch.sort(x).values


def rank_ties(
    scores: Tensor,
    positive_scores: Tensor,
    positive_weights: Tensor | None = None,
    n_regions: int = 0,
) -> RankedCounts:
    """Exact ranked counts with ties merged.

    Consecutive groups without positives are merged into one: on every curve they only form collinear
    points (ROC and PRO run horizontally through them, precision and F1 peak at positive groups), so no
    metric changes, and the work after the one global sort is proportional to the number of positives.

    Args:
        scores: every score (positives and negatives), any shape.
        positive_scores: the scores of the positives (a sub-multiset of ``scores``).
        positive_weights: optional per-positive PRO weight (``1/|region|``), summed in float64.
        n_regions: number of ground-truth regions the weights refer to.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    device = flat.device
    weighted = positive_weights is not None
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        pro = torch.zeros(0, dtype=torch.float64, device=device) if weighted else None
        return RankedCounts(empty.double(), empty, empty.clone(), pro, 1.0, n_regions)
    # Work on negated scores: an ascending sort of them is the descending order we need; negation is
    # exact and keeps ties.
    desc = sort_values(torch.neg(flat))
    pos_vals = torch.neg(positive_scores.reshape(-1).to(desc.dtype))
    if pos_vals.numel() == 0:  # one group: everything is negative
        zero = torch.zeros(1, dtype=torch.int64, device=device)
        pro = torch.zeros(1, dtype=torch.float64, device=device) if weighted else None
        return RankedCounts(-desc[-1:].double(), torch.tensor([n], device=device), zero, pro, 1.0, n_regions)
    uniq, n_pos = torch.unique_consecutive(sort_values(pos_vals), return_counts=True)
    # Where each positive value's tie group sits in the global order.
    start = torch.searchsorted(desc, uniq, right=False)
    end = torch.searchsorted(desc, uniq, right=True)
    prev_end = torch.cat([end.new_zeros(1), end[:-1]])
    run = start - prev_end  # negatives strictly between two positive groups
    # Interleave [run_0, group_0, run_1, group_1, ..., group_last, tail].
    n_groups = 2 * uniq.numel() + 1
    neg = torch.empty(n_groups, dtype=torch.int64, device=device)
    neg[0:-1:2], neg[1::2], neg[-1] = run, (end - start) - n_pos, n - end[-1]
    pos = torch.zeros(n_groups, dtype=torch.int64, device=device)
    pos[1::2] = n_pos
    thresholds = torch.empty(n_groups, dtype=desc.dtype, device=device)
    # A run's operating point is its lowest score: the value just before the next positive group.
    thresholds[0:-1:2] = desc[(start - 1).clamp_min(0)]
    thresholds[1::2] = uniq
    thresholds[-1] = desc[-1]
    pro = None
    if weighted:
        group = torch.searchsorted(uniq, pos_vals)
        pro = torch.zeros(n_groups, dtype=torch.float64, device=device)
        pro[1::2] = torch.bincount(
            group, weights=positive_weights.reshape(-1).to(torch.float64), minlength=uniq.numel()
        )
    keep = (neg + pos) > 0  # drop empty runs
    return RankedCounts(
        thresholds=torch.neg(thresholds[keep]).to(torch.float64),
        neg=neg[keep],
        pos=pos[keep],
        pro=pro[keep] if pro is not None else None,
        pro_scale=1.0,
        n_regions=n_regions,
        exact=True,
    )


def trapezoid(x: Tensor, y: Tensor, x_max: float | None = None) -> float:
    """Area under the piecewise-linear curve through ``(x, y)`` (x ascending), optionally up to ``x_max``.

    Same rule as ``trapezoid`` in the MVTec AD reference (``generic_util.py``): when ``x_max`` falls between
    two samples, the curve is cut there and ``y`` linearly interpolated; samples with ``x > x_max`` are dropped.
    """
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    correction = 0.0
    if x_max is not None:
        ins = int(
            torch.searchsorted(x, torch.tensor([x_max], dtype=torch.float64, device=x.device), right=True)
        )
        if ins == 0 or (ins == x.numel() and float(x[-1]) != x_max):
            raise ValueError(
                f"x_max={x_max} lies outside the curve's x range [{float(x[0])}, {float(x[-1])}]"
            )
        if float(x[ins - 1]) != x_max:
            x0, x1, y0, y1 = (float(v) for v in (x[ins - 1], x[ins], y[ins - 1], y[ins]))
            y_interp = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            correction = 0.5 * (y_interp + y0) * (x_max - x0)
        x, y = x[:ins], y[:ins]
    return float((0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])).sum()) + correction
