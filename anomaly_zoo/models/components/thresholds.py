"""Decision thresholds chosen without test data, and the [0, 1] score normalisation people expect.

After ``fit`` the shared loop scores a calibration set — the validation split when the DataModule has one,
otherwise the normal training images (evaluation transform) — and picks, for image scores and for pixels:

- ``f1max``: the F1-maximising threshold on a labelled calibration set (anomalous images, defect pixels);
- ``normal_quantile``: the ``quantile`` of the normal images' scores (of their pixels for the pixel
  threshold), for calibration sets without anomalies;
- ``auto`` (default): F1-max where the calibration set has positives, else the quantile.

The test split is never looked at. The min and max of the calibration scores give the optional
normalisation ``clip((s - t) / (max - min) + 0.5, 0, 1)`` — anomalib's min-max rule: 0.5 exactly at the
threshold ``t``, monotone, so "normalised ≥ 0.5" and "raw ≥ t" are the same decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anomaly_zoo.metrics.curves import RankedCounts, rank_ties
from anomaly_zoo.metrics.f1max import f1_max
from anomaly_zoo.metrics.pixel import PixelMetrics

__all__ = ["THRESHOLD_METHODS", "ThresholdCalibrator", "ThresholdOptions", "Thresholds", "normalize_scores"]

THRESHOLD_METHODS = ("auto", "f1max", "normal_quantile")


@dataclass
class ThresholdOptions:
    """How thresholds are chosen after ``fit`` (CLI: ``--threshold.method``, ``--threshold.quantile``,
    ``--threshold.normalize``).

    Args:
        method: ``auto`` (F1-max on a labelled validation split, else the normal quantile), ``f1max`` or
            ``normal_quantile``.
        quantile: quantile of the normal images' scores (``normal_quantile``, and ``auto`` without anomalies).
        normalize: ``predict`` and exported graphs report scores mapped to [0, 1] with 0.5 at the threshold.
    """

    method: str = "auto"
    quantile: float = 0.99
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got '{self.method}'.")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"threshold quantile must be in (0, 1), got {self.quantile}.")


def normalize_scores(scores: Any, threshold: float, low: float, high: float) -> Any:
    """``clip((scores - threshold) / (high - low) + 0.5, 0, 1)`` for tensors or arrays (0.5 at ``threshold``)."""
    span = max(float(high) - float(low), 1e-12)
    shifted = (scores - threshold) / span + 0.5
    if isinstance(shifted, Tensor):
        return shifted.clamp(0.0, 1.0)
    return np.clip(shifted, 0.0, 1.0)


@dataclass
class Thresholds:
    """Image and pixel thresholds on the model's raw scores, with the calibration ranges and their source.

    ``image_range`` / ``pixel_range`` are the (min, max) of the calibration scores, used by the
    normalisation; ``normalize`` says whether ``predict`` and exported graphs report normalised scores.
    """

    image: float
    pixel: float
    image_range: tuple[float, float]
    pixel_range: tuple[float, float]
    image_method: str
    pixel_method: str
    source: str
    n_images: int
    normalize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        data = dict(data)
        for key in ("image_range", "pixel_range"):
            data[key] = tuple(float(v) for v in data[key])
        return cls(**data)

    def normalized_image(self, scores: Any) -> Any:
        return normalize_scores(scores, self.image, *self.image_range)

    def normalized_map(self, maps: Any) -> Any:
        return normalize_scores(maps, self.pixel, *self.pixel_range)

    @property
    def image_decision(self) -> float:
        """The threshold in the unit ``predict`` reports scores in (0.5 when normalised)."""
        return 0.5 if self.normalize else self.image

    @property
    def pixel_decision(self) -> float:
        return 0.5 if self.normalize else self.pixel

    def describe(self) -> str:
        norm = "; scores normalised to [0, 1] (0.5 = threshold)" if self.normalize else ""
        return (
            f"Thresholds from {self.source} ({self.n_images} images): image {self.image:.6g} ({self.image_method}), "
            f"pixel {self.pixel:.6g} ({self.pixel_method}){norm}."
        )


class ThresholdCalibrator:
    """Accumulates calibration outputs (image scores, maps at mask resolution) and picks the thresholds.

    Image scores are kept exactly (a float per image); pixels go into two streaming histograms of
    :class:`~anomaly_zoo.metrics.pixel.PixelMetrics` (all images, and normal images only), so memory is
    bounded whatever the set size and a pixel threshold is exact to one histogram bin (≤ 2·range/65536).

    Args:
        method: ``auto``, ``f1max`` or ``normal_quantile`` (see the module docstring).
        quantile: the normal-score quantile of ``normal_quantile`` (and of ``auto`` without anomalies).
    """

    def __init__(self, method: str = "auto", quantile: float = 0.99) -> None:
        ThresholdOptions(method, quantile)  # validates
        self.method = method
        self.quantile = quantile
        self._scores: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._pixels = PixelMetrics(mode="streaming", with_pro=False)
        self._normal_pixels = PixelMetrics(mode="streaming", with_pro=False)

    def update(self, pred_score: Tensor, anomaly_map: Tensor, label: Tensor, mask: Tensor) -> None:
        """A batch: scores (B,), maps (B,1,H,W) at the masks' size, labels (B,) (0/1), masks (B,1,H,W)."""
        scores = pred_score.detach().reshape(-1).double().cpu()
        labels = label.detach().reshape(-1).long().cpu()
        if bool((labels < 0).any()):
            raise ValueError("calibration images need known labels (0 = normal, 1 = anomalous).")
        maps, masks = anomaly_map.detach().float().cpu(), mask.detach().cpu()
        self._scores.append(scores)
        self._labels.append(labels)
        self._pixels.update(maps, masks)
        normal = labels == 0
        if bool(normal.any()):
            self._normal_pixels.update(maps[normal], masks[normal])

    def compute(self, source: str, normalize: bool = False) -> Thresholds:
        if not self._scores:
            raise ValueError(f"no calibration images in {source}: cannot choose thresholds.")
        scores, labels = torch.cat(self._scores), torch.cat(self._labels)
        image, image_method = self._image_threshold(scores, labels)
        pixel, pixel_method = self._pixel_threshold()
        return Thresholds(
            image=image,
            pixel=pixel,
            image_range=(float(scores.min()), float(scores.max())),
            pixel_range=(float(self._pixels.tmin), float(self._pixels.tmax)),
            image_method=image_method,
            pixel_method=pixel_method,
            source=source,
            n_images=int(scores.numel()),
            normalize=normalize,
        )

    def _wants_f1(self, has_positives: bool, what: str) -> bool:
        if self.method == "f1max" and not has_positives:
            raise ValueError(f"threshold method 'f1max' needs anomalous {what} in the calibration set; "
                             "use 'normal_quantile' (or 'auto').")
        return self.method == "f1max" or (self.method == "auto" and has_positives)

    def _image_threshold(self, scores: Tensor, labels: Tensor) -> tuple[float, str]:
        positives = labels == 1
        if self._wants_f1(bool(positives.any()) and bool((~positives).any()), "images"):
            _, threshold = f1_max(rank_ties(scores, scores[positives]), "calibration image F1-max")
            return threshold, "F1-max"
        normal = scores[~positives]
        if normal.numel() == 0:
            raise ValueError("threshold method 'normal_quantile' needs normal images in the calibration set.")
        return float(torch.quantile(normal, self.quantile)), f"{self.quantile:g} quantile of normal image scores"

    def _pixel_threshold(self) -> tuple[float, str]:
        counts = self._pixels.ranked()
        if self._wants_f1(counts.n_pos > 0, "pixels (masks)"):
            _, threshold = f1_max(counts, "calibration pixel F1-max")
            return threshold, "F1-max (histogram bin edge)"
        normal = self._normal_pixels.ranked()
        if normal.n_neg == 0:
            raise ValueError("threshold method 'normal_quantile' needs normal images in the calibration set.")
        return histogram_quantile(normal, self.quantile), f"{self.quantile:g} quantile of normal images' pixels"


def histogram_quantile(counts: RankedCounts, quantile: float) -> float:
    """The lowest operating point that flags at most a ``1 - quantile`` fraction of the negatives.

    ``counts`` holds groups in descending order; group ``g`` flags every score ``>= thresholds[g]``.
    """
    _, flagged = counts.cumulative()
    allowed = (1.0 - quantile) * counts.n_neg
    ok = (flagged.double() <= allowed + 1e-9).nonzero()
    if ok.numel() == 0:  # even the top group flags too many: use it (nothing stricter exists)
        return float(counts.thresholds[0])
    return float(counts.thresholds[int(ok[-1])])
