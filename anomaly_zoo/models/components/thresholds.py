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

Per-category thresholds: a unified model (one network for many categories) scores each category on its own
scale, so one threshold flags all of one category and none of another. The calibrator therefore also picks,
by the same rule on the same calibration images, an image and a pixel threshold (and calibration range) per
category that has at least ``min_category_images`` images. They are used — in ``test``'s thresholded columns,
``predict``'s decisions and outlines, the normalisation — for images whose category has one, when
``per_category`` says so (default ``None`` = auto: when ≥ 2 categories qualified); every other image uses the
global thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
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
        per_category: use each category's own thresholds (``--threshold.per_category true|false``); ``None``
            (default) = auto: per-category when ≥ 2 categories had ``min_category_images`` calibration images.
            Given at ``test`` / ``predict`` time it overrides the checkpoint's choice (when it holds them).
        min_category_images: calibration images a category needs for its own thresholds.
    """

    method: str = "auto"
    quantile: float = 0.99
    normalize: bool = False
    per_category: bool | None = None
    min_category_images: int = 4

    def __post_init__(self) -> None:
        if self.method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got '{self.method}'.")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"threshold quantile must be in (0, 1), got {self.quantile}.")
        if self.min_category_images < 1:
            raise ValueError(f"threshold min_category_images must be >= 1, got {self.min_category_images}.")


def normalize_scores(scores: Any, threshold: Any, low: Any, high: Any) -> Any:
    """``clip((scores - threshold) / (high - low) + 0.5, 0, 1)`` for tensors or arrays (0.5 at ``threshold``).

    ``threshold``, ``low``, ``high`` are numbers, or for tensor scores tensors that broadcast against them
    (one per image: per-category thresholds); then the arithmetic is float64 and the result has the scores' dtype.
    """
    if isinstance(scores, Tensor) and any(isinstance(v, Tensor) for v in (threshold, low, high)):
        threshold, low, high = (torch.as_tensor(v, dtype=torch.float64, device=scores.device)
                                for v in (threshold, low, high))
        shifted = (scores.double() - threshold) / (high - low).clamp_min(1e-12) + 0.5
        return shifted.clamp(0.0, 1.0).to(scores.dtype if scores.is_floating_point() else torch.float32)
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
    ``per_category`` maps a category to its own :class:`Thresholds` (same fields, none nested);
    ``per_category_active`` says whether they are used (:meth:`for_category`). Checkpoints written before
    per-category thresholds existed have neither and behave as before (global only).
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
    per_category: dict[str, Thresholds] = field(default_factory=dict)
    per_category_active: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "per_category":
                value = {name: entry.to_dict() for name, entry in value.items()}
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        data = dict(data)
        for key in ("image_range", "pixel_range"):
            data[key] = tuple(float(v) for v in data[key])
        data["per_category"] = {name: cls.from_dict(entry) for name, entry in (data.get("per_category") or {}).items()}
        return cls(**data)

    def for_category(self, category: str | None) -> Thresholds:
        """The thresholds that decide for an image of ``category``: its own when active and known, else these."""
        if self.per_category_active and category is not None and category in self.per_category:
            return self.per_category[category]
        return self

    def per_image(self, categories: Sequence[str] | str | None, n: int) -> dict[str, Tensor]:
        """(n,) float64 tensors ``image``, ``image_low``, ``image_high``, ``pixel``, ``pixel_low``, ``pixel_high``:
        the deciding thresholds and calibration ranges of each of ``n`` images (by its category)."""
        if categories is None or isinstance(categories, str):
            categories = [categories] * n
        chosen = [self.for_category(c) for c in categories]
        values = {
            "image": [t.image for t in chosen], "image_low": [t.image_range[0] for t in chosen],
            "image_high": [t.image_range[1] for t in chosen], "pixel": [t.pixel for t in chosen],
            "pixel_low": [t.pixel_range[0] for t in chosen], "pixel_high": [t.pixel_range[1] for t in chosen],
        }
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}

    @property
    def mode(self) -> str:
        """``per-category`` or ``global``: which thresholds decide."""
        return "per-category" if self.per_category_active and self.per_category else "global"

    def category_table(self) -> str:
        """The per-category thresholds as a small plain-text table (printed after fit)."""
        if not self.per_category:
            return ""
        width = max(8, *(len(c) for c in self.per_category))
        lines = [f"{'category':<{width}}  {'images':>6}  {'image thr':>11}  {'pixel thr':>11}  method (image / pixel)"]
        for name, t in self.per_category.items():
            lines.append(f"{name:<{width}}  {t.n_images:>6}  {t.image:>11.6g}  {t.pixel:>11.6g}  "
                         f"{t.image_method} / {t.pixel_method}")
        lines.append(f"{'(global)':<{width}}  {self.n_images:>6}  {self.image:>11.6g}  {self.pixel:>11.6g}  "
                     f"{self.image_method} / {self.pixel_method}")
        return "\n".join(lines)

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
        if self.mode == "per-category":
            mode = (f" Per-category thresholds in use for {len(self.per_category)} categories "
                    f"({', '.join(self.per_category)}); other categories use the global ones.")
        elif len(self.per_category) >= 2:
            mode = f" Global thresholds in use (per-category ones stored for {len(self.per_category)}, not used)."
        else:
            mode = " Global thresholds in use."
        return (
            f"Thresholds from {self.source} ({self.n_images} images): image {self.image:.6g} ({self.image_method}), "
            f"pixel {self.pixel:.6g} ({self.pixel_method}){norm}.{mode}"
        )


class _CalibrationSet:
    """The calibration outputs of one group of images (all of them, or one category)."""

    def __init__(self) -> None:
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.pixels = PixelMetrics(mode="streaming", with_pro=False)
        self.normal_pixels = PixelMetrics(mode="streaming", with_pro=False)

    def update(self, scores: Tensor, labels: Tensor, maps: Tensor, masks: Tensor) -> None:
        self.scores.append(scores)
        self.labels.append(labels)
        self.pixels.update(maps, masks)
        normal = labels == 0
        if bool(normal.any()):
            self.normal_pixels.update(maps[normal], masks[normal])

    @property
    def n_images(self) -> int:
        return sum(int(s.numel()) for s in self.scores)


class ThresholdCalibrator:
    """Accumulates calibration outputs (image scores, maps at mask resolution) and picks the thresholds.

    Image scores are kept exactly (a float per image); pixels go into two streaming histograms of
    :class:`~anomaly_zoo.metrics.pixel.PixelMetrics` (all images, and normal images only), so memory is
    bounded whatever the set size and a pixel threshold is exact to one histogram bin (≤ 2·range/65536).
    The same is kept per category (given to :meth:`update`) for the per-category thresholds.

    Args:
        method: ``auto``, ``f1max`` or ``normal_quantile`` (see the module docstring).
        quantile: the normal-score quantile of ``normal_quantile`` (and of ``auto`` without anomalies).
        per_category: use per-category thresholds (``None`` = when ≥ 2 categories qualify).
        min_category_images: calibration images a category needs for its own thresholds.
    """

    def __init__(self, method: str = "auto", quantile: float = 0.99, per_category: bool | None = None,
                 min_category_images: int = 4) -> None:
        ThresholdOptions(method, quantile, min_category_images=min_category_images)  # validates
        self.method = method
        self.quantile = quantile
        self.per_category = per_category
        self.min_category_images = min_category_images
        self._all = _CalibrationSet()
        self._categories: dict[str, _CalibrationSet] = {}

    def update(self, pred_score: Tensor, anomaly_map: Tensor, label: Tensor, mask: Tensor,
               category: Sequence[str] | str | None = None) -> None:
        """A batch: scores (B,), maps (B,1,H,W) at the masks' size, labels (B,) (0/1), masks (B,1,H,W),
        and the images' categories (B names, one name, or ``None`` for no per-category thresholds)."""
        scores = pred_score.detach().reshape(-1).double().cpu()
        labels = label.detach().reshape(-1).long().cpu()
        if bool((labels < 0).any()):
            raise ValueError("calibration images need known labels (0 = normal, 1 = anomalous).")
        maps, masks = anomaly_map.detach().float().cpu(), mask.detach().cpu()
        self._all.update(scores, labels, maps, masks)
        if category is None:
            return
        names = [category] * scores.numel() if isinstance(category, str) else [str(c) for c in category]
        for name in dict.fromkeys(names):
            keep = torch.tensor([n == name for n in names])
            self._categories.setdefault(name, _CalibrationSet()).update(scores[keep], labels[keep], maps[keep],
                                                                        masks[keep])

    def compute(self, source: str, normalize: bool = False) -> Thresholds:
        if not self._all.scores:
            raise ValueError(f"no calibration images in {source}: cannot choose thresholds.")
        thresholds = self._thresholds(self._all, source, normalize, strict=True)
        assert thresholds is not None
        for name, group in self._categories.items():
            if group.n_images < self.min_category_images:
                continue  # too few images for a threshold of its own: the category uses the global ones
            own = self._thresholds(group, f"{source}, category {name}", normalize, strict=False)
            if own is not None:
                thresholds.per_category[name] = own
        wanted = len(thresholds.per_category) >= 2 if self.per_category is None else self.per_category
        thresholds.per_category_active = bool(wanted and thresholds.per_category)
        return thresholds

    def _thresholds(self, group: _CalibrationSet, source: str, normalize: bool, strict: bool) -> Thresholds | None:
        """The rule on one group; ``strict=False`` returns ``None`` where the rule cannot apply (a category
        without the anomalies ``f1max`` needs, or without normal images for a quantile) instead of raising."""
        scores, labels = torch.cat(group.scores), torch.cat(group.labels)
        try:
            image, image_method = self._image_threshold(scores, labels)
            pixel, pixel_method = self._pixel_threshold(group)
        except ValueError:
            if strict:
                raise
            return None
        return Thresholds(
            image=image,
            pixel=pixel,
            image_range=(float(scores.min()), float(scores.max())),
            pixel_range=(float(group.pixels.tmin), float(group.pixels.tmax)),
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

    def _pixel_threshold(self, group: _CalibrationSet) -> tuple[float, str]:
        counts = group.pixels.ranked()
        if self._wants_f1(counts.n_pos > 0, "pixels (masks)"):
            _, threshold = f1_max(counts, "calibration pixel F1-max")
            return threshold, "F1-max (histogram bin edge)"
        normal = group.normal_pixels.ranked()
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
