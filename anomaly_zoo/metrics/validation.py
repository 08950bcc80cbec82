"""Input checks shared by all metrics: fail early with a message that names the fix."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "MetricUndefinedWarning",
    "PixelBatch",
    "warn_undefined",
    "check_image_inputs",
    "check_pixel_batch",
    "check_pixel_inputs",
]


class MetricUndefinedWarning(UserWarning):
    """A metric is mathematically undefined for the data seen (e.g. no anomalous sample); it returns NaN."""


def warn_undefined(metric: str, reason: str) -> float:
    """Warn that ``metric`` is undefined and return NaN (the documented value for that case)."""
    warnings.warn(f"{metric} is undefined ({reason}); returning NaN.", MetricUndefinedWarning, stacklevel=3)
    return float("nan")


def _check_finite(scores: Tensor, name: str) -> tuple[float, float]:
    """Raise on NaN/inf; return (min, max)."""
    if scores.numel() == 0:
        return 0.0, 0.0
    # aminmax propagates NaN and exposes +-inf, so one reduction checks both (cheaper than isfinite().all()).
    lo, hi = (float(v) for v in torch.aminmax(scores))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        n_bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN/inf value(s); anomaly scores must be finite "
            "(check the model output, e.g. a division by zero in normalisation)."
        )
    return lo, hi


def _as_binary(target: Tensor, name: str) -> Tensor:
    """Return ``target`` as uint8 0/1, refusing anything that is not already 0/1."""
    if target.dtype == torch.bool:
        return target.view(torch.uint8)  # zero-copy
    if target.is_floating_point() or target.is_complex():
        if target.numel() and not bool(((target == 0) | (target == 1)).all()):
            raise ValueError(
                f"{name} must contain only 0 and 1; found other values (binarise it in the dataset)."
            )
        return target.to(torch.uint8)
    if target.numel():
        lo, hi = torch.aminmax(target)
        if int(lo) < 0 or int(hi) > 1:
            raise ValueError(
                f"{name} must contain only 0 and 1, found values in [{int(lo)}, {int(hi)}] "
                "(a 0/255 mask? binarise it in the dataset with `mask > 0`)."
            )
    return target.to(torch.uint8)


def check_image_inputs(
    pred_score: Tensor, label: Tensor, index: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate image-level inputs; return ``(scores float64 (N,), labels uint8 (N,), index int64 (N,))``.

    A missing ``index`` is stored as -1, meaning "never a duplicate".
    """
    if not isinstance(pred_score, Tensor) or not isinstance(label, Tensor):
        raise TypeError("pred_score and label must be torch tensors")
    if pred_score.dim() == 2 and pred_score.shape[1] == 1:
        pred_score = pred_score[:, 0]
    if pred_score.dim() > 1:
        raise ValueError(f"pred_score must have shape (N,), got {tuple(pred_score.shape)}")
    scores = pred_score.detach().reshape(-1)
    labels = label.detach().reshape(-1)
    if scores.numel() != labels.numel():
        raise ValueError(f"pred_score has {scores.numel()} entries but label has {labels.numel()}")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    _check_finite(scores, "pred_score")
    labels = _as_binary(labels, "label")
    if index is None:
        idx = torch.full((scores.numel(),), -1, dtype=torch.int64, device=scores.device)
    else:
        idx = torch.as_tensor(index, device=scores.device).detach().reshape(-1).to(torch.int64)
        if idx.numel() != scores.numel():
            raise ValueError(f"index has {idx.numel()} entries but pred_score has {scores.numel()}")
    return scores.to(torch.float64), labels, idx


class PixelBatch(NamedTuple):
    maps: Tensor  # float32 (N, H, W)
    masks: Tensor  # uint8 0/1 (N, H, W)
    lo: float  # min score
    hi: float  # max score


def check_pixel_batch(anomaly_map: Tensor, mask: Tensor) -> PixelBatch:
    """Validate a batch of maps and masks; return them as float32 / uint8 (N,H,W) with the score range.

    Accepts (N,H,W) or (N,1,H,W) for either argument. Maps are evaluated in float32 (their native precision):
    float16/bfloat16 maps are widened losslessly, float64 maps are rounded.
    """
    if not isinstance(anomaly_map, Tensor) or not isinstance(mask, Tensor):
        raise TypeError("anomaly_map and mask must be torch tensors")

    def squeeze(x: Tensor, name: str) -> Tensor:
        if x.dim() == 4 and x.shape[1] == 1:
            return x[:, 0]
        if x.dim() == 3:
            return x
        raise ValueError(f"{name} must have shape (N,H,W) or (N,1,H,W), got {tuple(x.shape)}")

    maps = squeeze(anomaly_map.detach(), "anomaly_map")
    masks = squeeze(mask.detach(), "mask")
    if maps.shape != masks.shape:
        raise ValueError(
            f"anomaly_map {tuple(anomaly_map.shape)} and mask {tuple(mask.shape)} do not match: "
            "the model must return the map at the mask's resolution (upsample it before evaluation)."
        )
    if maps.device != masks.device:
        masks = masks.to(maps.device)
    if maps.dtype != torch.float32:
        # Pixel scores are evaluated in float32, the precision anomaly maps are produced in.
        maps = maps.to(torch.float32)
    lo, hi = _check_finite(maps, "anomaly_map")
    return PixelBatch(maps.contiguous(), _as_binary(masks, "mask").contiguous(), lo, hi)


def check_pixel_inputs(anomaly_map: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Validated ``(maps float32 (N,H,W), masks uint8 (N,H,W))``; see :func:`check_pixel_batch`."""
    batch = check_pixel_batch(anomaly_map, mask)
    return batch.maps, batch.masks
