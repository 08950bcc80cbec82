"""Plain numpy reference implementations, used to test the metrics and as the benchmark baseline (test-only).

``reference_pro_curve`` / ``reference_trapezoid`` follow the MVTec AD evaluation code step by step
(``pro_curve_util.compute_pro`` and ``generic_util.trapezoid``): 8-connected components with
``scipy.ndimage.label`` and a 3x3 structure of ones, one global argsort of all pixel scores, per-pixel FPR
and PRO increments accumulated with ``cumsum``, ties merged by keeping the last point of each run of equal
scores, (0, 0) and (1, 1) added, integration cut at the limit with linear interpolation. As in the
reference, the cumulative FPR is converted to float32 (PRO stays float64). ROC AUC, AP and F1-max follow
scikit-learn's definitions (one global sort, ties merged). Slow by design: clarity over speed.
"""

from __future__ import annotations

from bisect import bisect

import numpy as np
from scipy import ndimage

__all__ = [
    "reference_pro_curve",
    "reference_trapezoid",
    "reference_aupro",
    "reference_binary_curve",
    "reference_auroc",
    "reference_average_precision",
    "reference_f1_max",
]


def reference_pro_curve(
    anomaly_maps: list[np.ndarray], ground_truth_maps: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct threshold, from (0, 0) to (1, 1), over a whole test set of 2-D maps.

    Unlike the original, images may differ in size (per-image arrays are raveled and concatenated).
    """
    structure = np.ones((3, 3), dtype=int)  # 8-connectivity
    fp_changes, pro_changes = [], []
    num_ok_pixels = 0
    num_gt_regions = 0
    for gt in ground_truth_maps:
        labeled, n_components = ndimage.label(gt, structure)
        num_gt_regions += n_components
        ok = labeled == 0
        num_ok_pixels += int(ok.sum())
        fp_change = np.zeros(gt.shape, dtype=np.uint32)
        fp_change[ok] = 1
        pro_change = np.zeros(gt.shape, dtype=np.float64)
        for k in range(1, n_components + 1):
            region = labeled == k
            pro_change[region] = 1.0 / region.sum()
        fp_changes.append(fp_change.ravel())
        pro_changes.append(pro_change.ravel())

    scores = np.concatenate([np.asarray(m).ravel() for m in anomaly_maps])
    order = np.argsort(scores)[::-1]
    scores_sorted = scores[order]
    fprs = np.cumsum(np.concatenate(fp_changes)[order]).astype(np.float32) / np.float32(num_ok_pixels)
    pros = np.cumsum(np.concatenate(pro_changes)[order]) / num_gt_regions
    # Keep the last point of every run of equal scores: it includes all pixels at that threshold.
    keep = np.append(np.diff(scores_sorted) != 0, True)
    fprs = np.clip(fprs[keep], None, 1.0)
    pros = np.clip(pros[keep], None, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def reference_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Trapezoidal area under (x, y), cut at ``x_max`` with linear interpolation (x ascending)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    correction = 0.0
    if x_max is not None:
        if x_max not in x:
            ins = bisect(x.tolist(), x_max)
            assert 0 < ins < len(x)
            y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
            correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
        inside = x <= x_max
        x, y = x[inside], y[inside]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def reference_aupro(
    anomaly_maps: list[np.ndarray], ground_truth_maps: list[np.ndarray], fpr_limit: float = 0.3
) -> float:
    fprs, pros = reference_pro_curve(anomaly_maps, ground_truth_maps)
    return reference_trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit


def reference_binary_curve(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (TP, FP, threshold) at each distinct score, descending (scikit-learn's ``_binary_clf_curve``)."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(np.int64)
    order = np.argsort(scores, kind="stable")[::-1]
    scores, labels = scores[order], labels[order]
    last = np.append(np.flatnonzero(np.diff(scores)), scores.size - 1)
    tps = np.cumsum(labels)[last]
    fps = (last + 1) - tps
    return tps, fps, scores[last]


def reference_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    tps, fps, _ = reference_binary_curve(scores, labels)
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    return float(np.trapezoid(tpr, fpr))


def reference_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    tps, fps, _ = reference_binary_curve(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def reference_f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    tps, fps, thresholds = reference_binary_curve(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])
