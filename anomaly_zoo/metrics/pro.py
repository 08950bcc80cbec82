"""Per-Region Overlap (PRO) curve and AUPRO, as defined by the MVTec AD reference evaluation.

Definition (``pro_curve_util.py`` / ``generic_util.py`` of the MVTec AD evaluation code):

* regions are the connected components of each ground-truth mask, per image, with 8-connectivity
  (``scipy.ndimage.label`` with a 3x3 structuring element of ones);
* at a threshold, PRO is the mean over *all regions of the whole test set* of the fraction of the region's
  pixels scoring ``>=`` the threshold; the FPR is over *all normal pixels of the whole test set*;
* equal scores form one operating point; the curve starts at (0, 0) and ends at (1, 1);
* AUPRO integrates the curve up to ``fpr_limit`` (interpolating at the limit) and divides by ``fpr_limit``.

So a constant map gives AUPRO(0.3) = 0.15 and a perfect map 1.0.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from anomaly_zoo.metrics.curves import RankedCounts, rank_ties, trapezoid
from anomaly_zoo.metrics.validation import check_pixel_inputs, warn_undefined

__all__ = [
    "PRO_WEIGHT_SCALE",
    "pro_curve_points",
    "aupro",
    "aupro_error_bound",
    "pro_curve",
    "aupro_score",
    "defect_pixels",
]

# Streaming mode stores PRO weights 1/|region| as int64 fixed point: exact, order-independent sums
# (identical results under DDP), at most |region| * 2**-41 relative error per region.
PRO_WEIGHT_SCALE = 2**40


def defect_pixels(values: Tensor, masks: Tensor, fixed_point: bool = False) -> tuple[Tensor, Tensor, int]:
    """Values (scores, or bin indices) and PRO weights of all defect pixels of a batch.

    Returns ``(values (D,), weights (D,), n_regions)`` in image-major, row-major pixel order; weights are
    ``1/|region|`` in float64, or ``round(2**40/|region|)`` int64 when ``fixed_point``.
    """
    n, h, w = masks.shape
    wdtype = torch.int64 if fixed_point else torch.float64
    masks_np = masks.cpu().numpy()
    rows_hit = masks_np.max(axis=2)  # (n, h): rows that contain a defect pixel
    images = np.flatnonzero(rows_hit.max(axis=1))
    if images.size == 0:
        return values.new_zeros(0), torch.zeros(0, dtype=wdtype, device=values.device), 0
    # Label only the band of rows that holds each image's defects (a fraction of the image), all bands
    # stacked into one tall image with a zero row under each: one OpenCV call, regions cannot touch.
    crops, row_base = [], []
    for i in images.tolist():
        hit = np.flatnonzero(rows_hit[i])
        r0, r1 = int(hit[0]), int(hit[-1]) + 1
        crops.append(masks_np[i, r0:r1])
        crops.append(np.zeros((1, w), dtype=np.uint8))
        row_base.append(i * h * w + np.arange(r0, r1, dtype=np.int64) * w)
        row_base.append(np.full(1, -1, dtype=np.int64))
    tall = np.concatenate(crops)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(tall, connectivity=8, ltype=cv2.CV_32S)
    flat_labels = labels.reshape(-1)
    where = np.flatnonzero(flat_labels)
    row, col = np.divmod(where, w)
    flat_pos = torch.from_numpy(np.concatenate(row_base)[row] + col).to(values.device)
    sizes = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    weight_of = np.rint(PRO_WEIGHT_SCALE / sizes).astype(np.int64) if fixed_point else 1.0 / sizes
    weights = torch.from_numpy(weight_of[flat_labels[where]]).to(values.device)
    return values.reshape(-1)[flat_pos], weights, sizes.size - 1


def pro_curve_points(counts: RankedCounts, fpr_limit: float | None = None) -> tuple[Tensor, Tensor]:
    """(FPR, PRO) at every operating point, with (0, 0) prepended and (1, 1) appended like the reference.

    With ``fpr_limit``, points beyond the first one past the limit are left out (they do not change the
    area up to the limit, and skipping them saves most of the work on large test sets).
    """
    if counts.pro is None:
        raise ValueError("these ranked counts carry no PRO weights (compute them with PRO enabled)")
    fp = torch.cumsum(counts.neg, 0)
    pro_w = counts.pro
    if fpr_limit is not None and fpr_limit < 1.0:
        # First group whose FP count is safely past the limit (one extra count of margin for rounding).
        past = int(torch.searchsorted(fp, int(fpr_limit * counts.n_neg) + 1, right=True))
        fp, pro_w = fp[: past + 1], pro_w[: past + 1]
    # Integer cumsum first (fixed point), so streaming sums are exact; float64 for exact mode.
    pro_sum = torch.cumsum(pro_w, 0).double() / counts.pro_scale
    fpr = fp.double() / max(counts.n_neg, 1)
    pro = pro_sum / max(counts.n_regions, 1)
    # Rounding can leave the last values a hair above 1; the reference clips them the same way.
    fpr, pro = fpr.clamp_max(1.0), pro.clamp_max(1.0)
    zero = fpr.new_zeros(1)
    one = fpr.new_ones(1)
    return torch.cat([zero, fpr, one]), torch.cat([zero, pro, one])


def _check_defined(counts: RankedCounts) -> float | None:
    if counts.n_regions == 0:
        return warn_undefined("AUPRO", "no defect region in the whole test set")
    if counts.n_neg == 0:
        return warn_undefined("AUPRO", "no normal pixel in the whole test set")
    return None


def aupro(counts: RankedCounts, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (so in [0, 1]).

    NaN with a :class:`MetricUndefinedWarning` when there is no defect region or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    undefined = _check_defined(counts)
    if undefined is not None:
        return undefined
    fpr, pro = pro_curve_points(counts, fpr_limit)
    return trapezoid(fpr, pro, x_max=fpr_limit) / fpr_limit


def aupro_error_bound(counts: RankedCounts, fpr_limit: float = 0.3) -> float:
    """Largest possible |binned AUPRO - exact AUPRO|.

    Binned operating points lie on the exact curve, and between two of them the exact (monotone) curve stays
    in the box they span. So each bin below the limit adds at most ``dFPR * dPRO / 2``, the bin that crosses
    the limit at most ``(limit - FPR0) * dPRO``. Plus the fixed-point rounding of the PRO weights.
    """
    if counts.exact or counts.n_regions == 0 or counts.n_neg == 0:
        return 0.0
    fpr, pro = pro_curve_points(counts, fpr_limit)
    fpr, pro = fpr[:-1], pro[:-1]  # drop the appended (1, 1): it is exact
    dx, dy = torch.diff(fpr), torch.diff(pro)
    x0 = fpr[:-1]
    inside = fpr[1:] <= fpr_limit
    bound = float((dx * dy)[inside].sum()) / 2.0
    crossing = (x0 < fpr_limit) & (fpr[1:] > fpr_limit)
    if bool(crossing.any()):
        bound += float(((fpr_limit - x0) * dy)[crossing].sum())
    quantisation = 0.0
    if counts.pro_scale != 1.0:
        # each pixel weight is off by <= 0.5 / scale (relative to a region's total of 1)
        quantisation = counts.n_pos * 0.5 / counts.pro_scale / counts.n_regions
    return bound / fpr_limit + quantisation


def pro_curve(anomaly_map: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Exact PRO curve of a whole test set: returns (FPR, PRO) float64 tensors, including (0,0) and (1,1).

    ``anomaly_map`` and ``mask`` are (N, H, W) or (N, 1, H, W). Runs of thresholds that only add normal
    pixels are merged (collinear points; the area is unchanged).
    """
    maps, masks = check_pixel_inputs(anomaly_map, mask)
    scores, weights, n_regions = defect_pixels(maps, masks)
    return pro_curve_points(rank_ties(maps, scores, weights, n_regions))


def aupro_score(anomaly_map: Tensor, mask: Tensor, fpr_limit: float = 0.3) -> float:
    """Exact AUPRO of a whole test set given at once (see :class:`~anomaly_zoo.metrics.AUPRO` for batches)."""
    maps, masks = check_pixel_inputs(anomaly_map, mask)
    scores, weights, n_regions = defect_pixels(maps, masks)
    return aupro(rank_ties(maps, scores, weights, n_regions), fpr_limit)
