"""Pixel-level metrics (AUROC, AP, F1-max, AUPRO) from anomaly maps and ground-truth masks.

Two modes, one class each behind one interface (:class:`~anomaly_zoo.metrics.pixel_store.PixelStore`:
:mod:`~anomaly_zoo.metrics.pixel_exact`, :mod:`~anomaly_zoo.metrics.pixel_streaming`), share one code path
from :class:`~anomaly_zoo.metrics.curves.RankedCounts` on:

``exact``
    Keeps every map and mask (4 + 1 bytes per pixel) plus each sample's dataset index. ``compute()`` drops
    DDP padding duplicates by index, sorts all scores once and merges ties: the MVTec AD reference numbers
    (agreement ~1e-12 on AUROC/AP/F1, ~1e-9 on AUPRO, where the reference rounds FPRs to float32).
``streaming``
    Keeps three fixed-size histograms (normal pixels, defect pixels, PRO weight of defect pixels; 24 bytes
    per bin, 1.5 MiB at the default 65,536 bins) whatever the number of images. PRO region weights are
    computed per image at update time (int64 fixed point, 2**-40). The score range adapts (see
    :mod:`~anomaly_zoo.metrics.histogram`): bins are ``2**k`` wide, at most ``2 * (max - min) / num_bins``.

    Error bound. Every binned operating point is an exact operating point, so the streaming value differs
    from the exact one only through pixels that share a bin. With per-bin counts ``pos_b``, ``neg_b``,
    totals ``P``, ``N`` and cumulative counts before/after the bin ``tp0, fp0`` / ``tp1, fp1``:

    * AUROC: ``|err| <= sum_b pos_b * neg_b / (2 P N)`` (pairs in one bin count 1/2 instead of 0 or 1);
    * AP: ``|err| <= sum_b pos_b / P * (tp1 / (tp1 + fp0) - (tp0 + 1) / (tp0 + 1 + fp1))``;
    * F1-max: ``0 <= exact - streaming <= max_b 2 tp1 / (tp1 + fp0 + P) - streaming``;
    * AUPRO: ``|err| <= (sum over bins below the limit of dFPR * dPRO / 2 + (limit - FPR0) * dPRO for the bin
      crossing it) / limit + P * 2**-41 / regions`` (the exact curve stays in the box of each bin).

    :meth:`PixelMetrics.error_bounds` evaluates these on the histograms (``AnomalyMetrics`` reports them
    in ``details`` and warns above 0.05 percentage points). For continuous scores on the default 65,536 bins
    they are typically 1e-7 to 1e-4; outliers far beyond the bulk of the scores coarsen the bins and the
    bound grows accordingly. Exact cross-class ties (e.g. quantised maps) are counted as possible errors.

    Assumption: no sample is seen twice. Histograms cannot forget a sample, so DDP evaluation must use a
    non-padding sampler (the DataModules do); :class:`~anomaly_zoo.metrics.AnomalyMetrics` warns otherwise.

Standalone metrics default to ``mode="exact"``; :class:`~anomaly_zoo.metrics.AnomalyMetrics` (what the
Lightning modules use) defaults to ``"streaming"``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from anomaly_zoo.metrics.auroc import auroc, auroc_error_bound
from anomaly_zoo.metrics.average_precision import average_precision, average_precision_error_bound
from anomaly_zoo.metrics.curves import RankedCounts
from anomaly_zoo.metrics.f1max import f1_max, f1_max_error_bound
from anomaly_zoo.metrics.pixel_exact import ExactPixelStore
from anomaly_zoo.metrics.pixel_store import PixelStore
from anomaly_zoo.metrics.pixel_streaming import StreamingPixelStore
from anomaly_zoo.metrics.pro import aupro, aupro_error_bound, pro_curve_points
from anomaly_zoo.metrics.samples import ListStateMetric
from anomaly_zoo.metrics.validation import check_pixel_batch

__all__ = ["DEFAULT_NUM_BINS", "PIXEL_STORES", "PixelMetrics", "PixelAUROC", "PixelAP", "PixelF1Max", "AUPRO"]

DEFAULT_NUM_BINS = 2**16
PixelMode = Literal["exact", "streaming"]
#: ``mode`` name -> the store that keeps the pixels in that mode (one class per mode, one interface).
PIXEL_STORES: dict[str, type[PixelStore]] = {store.mode: store for store in (ExactPixelStore, StreamingPixelStore)}


class PixelMetrics(ListStateMetric):
    """All pixel-level metrics at once.

    Args:
        mode: ``"exact"`` or ``"streaming"`` (see the module docstring): picks the :class:`PixelStore`
            (``.store``) that keeps the pixels; everything from the ranked counts on is shared.
        fpr_limit: AUPRO integration limit; the area is divided by it.
        num_bins: histogram size in streaming mode.
        with_pro: compute connected components and AUPRO (off for AUROC/AP/F1-only metrics: faster).

    ``update(anomaly_map, mask, index=None)`` takes (N,H,W) or (N,1,H,W) tensors; ``index`` (N,) is the
    samples' dataset index (exact mode uses it to drop duplicates). ``compute()`` returns a dict of float64
    scalar tensors: ``auroc``, ``ap``, ``f1max``, ``f1max_threshold``, ``aupro`` (if ``with_pro``),
    ``n_images`` and the streaming error bounds ``*_bound`` (0 in exact mode).
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        mode: PixelMode = "exact",
        fpr_limit: float = 0.3,
        num_bins: int = DEFAULT_NUM_BINS,
        with_pro: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in PIXEL_STORES:
            raise ValueError(f"mode must be 'exact' or 'streaming', got {mode!r}")
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        if num_bins < 16:
            raise ValueError(f"num_bins must be at least 16, got {num_bins}")
        self.mode = mode
        self.fpr_limit = float(fpr_limit)
        self.num_bins = int(num_bins)
        self.with_pro = with_pro
        self.store = PIXEL_STORES[mode](self, with_pro, self.num_bins)
        self.add_state("n_regions", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, anomaly_map: Tensor, mask: Tensor, index: Tensor | None = None) -> None:
        batch = check_pixel_batch(anomaly_map, mask)
        if batch.maps.numel() == 0:
            return
        self.n_images += batch.maps.shape[0]
        self.store.update(batch, index)

    def ranked(self) -> RankedCounts:
        """Ranked counts of the current (local, or synced inside ``compute``) states."""
        return self.store.ranked()

    def _values(self, counts: RankedCounts) -> dict[str, float]:
        f1, threshold = f1_max(counts, "pixel F1-max")
        values = {
            "auroc": auroc(counts, "pixel AUROC"),
            "ap": average_precision(counts, "pixel AP"),
            "f1max": f1,
            "f1max_threshold": threshold,
        }
        bounds = {
            "auroc_bound": auroc_error_bound(counts),
            "ap_bound": average_precision_error_bound(counts),
            "f1max_bound": f1_max_error_bound(counts),
        }
        if self.with_pro:
            values["aupro"] = aupro(counts, self.fpr_limit)
            bounds["aupro_bound"] = aupro_error_bound(counts, self.fpr_limit)
        return {**values, **bounds}

    def _all_values(self) -> dict[str, float]:
        counts = self.ranked()
        out = {"n_images": float(self.n_images)}
        if counts.n_pos + counts.n_neg == 0:
            nan = float("nan")
            keys = ["auroc", "ap", "f1max", "f1max_threshold"] + (["aupro"] if self.with_pro else [])
            out.update({k: nan for k in keys})
        else:
            out.update(self._values(counts))
        return out

    def compute(self) -> dict[str, Tensor]:
        out = self._on_root(self._all_values)
        return {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in out.items()}

    @property
    def root_states(self) -> tuple[str, ...]:
        return self.store.root_states

    def error_bounds(self) -> dict[str, float]:
        """Upper bounds on |value - exact value| per metric (all 0 in exact mode)."""
        values = self._synced(lambda: self._values(self.ranked()))
        return {k[: -len("_bound")]: v for k, v in values.items() if k.endswith("_bound")}


class _SinglePixelMetric(PixelMetrics):
    _key = ""
    _with_pro = False

    def __init__(
        self,
        mode: PixelMode = "exact",
        num_bins: int = DEFAULT_NUM_BINS,
        fpr_limit: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, fpr_limit=fpr_limit, num_bins=num_bins, with_pro=self._with_pro, **kwargs)

    def compute(self) -> Tensor:  # type: ignore[override]
        value, threshold = self._on_root(self._single_value)
        if threshold is not None:
            self.threshold = threshold
        return torch.tensor(value, dtype=torch.float64, device=self.device)

    def _single_value(self) -> tuple[float, float | None]:
        counts = self.ranked()
        if counts.n_pos + counts.n_neg == 0:
            raise ValueError(f"{type(self).__name__} received no pixels: is the test set empty?")
        return self._single(counts), getattr(self, "threshold", None)

    def _single(self, counts: RankedCounts) -> float:
        raise NotImplementedError

    def error_bound(self) -> float:
        """Upper bound on |value - exact value| (0 in exact mode)."""
        return self.error_bounds()[self._key]


class PixelAUROC(_SinglePixelMetric):
    """Pixel-level AUROC of raw anomaly maps. ``update(anomaly_map, mask, index=None)``."""

    _key = "auroc"

    def __init__(self, mode: PixelMode = "exact", num_bins: int = DEFAULT_NUM_BINS, **kwargs: Any) -> None:
        super().__init__(mode=mode, num_bins=num_bins, **kwargs)

    def _single(self, counts: RankedCounts) -> float:
        return auroc(counts, "pixel AUROC")


class PixelAP(_SinglePixelMetric):
    """Pixel-level average precision. ``update(anomaly_map, mask, index=None)``."""

    _key = "ap"

    def __init__(self, mode: PixelMode = "exact", num_bins: int = DEFAULT_NUM_BINS, **kwargs: Any) -> None:
        super().__init__(mode=mode, num_bins=num_bins, **kwargs)

    def _single(self, counts: RankedCounts) -> float:
        return average_precision(counts, "pixel AP")


class PixelF1Max(_SinglePixelMetric):
    """Pixel-level F1-max; the threshold reaching it is in ``.threshold`` after ``compute()``."""

    _key = "f1max"
    threshold: float = float("nan")

    def __init__(self, mode: PixelMode = "exact", num_bins: int = DEFAULT_NUM_BINS, **kwargs: Any) -> None:
        super().__init__(mode=mode, num_bins=num_bins, **kwargs)

    def _single(self, counts: RankedCounts) -> float:
        f1, self.threshold = f1_max(counts, "pixel F1-max")
        return f1


class AUPRO(_SinglePixelMetric):
    """Area under the PRO curve up to ``fpr_limit``, normalised by ``fpr_limit`` (MVTec AD definition).

    ``AUPRO(fpr_limit=0.3, mode="exact" | "streaming")``; ``update(anomaly_map, mask, index=None)``;
    ``compute()`` -> scalar tensor; ``curve()`` -> (FPR, PRO) tensors of the whole curve.
    """

    _key = "aupro"
    _with_pro = True

    def __init__(
        self,
        fpr_limit: float = 0.3,
        mode: PixelMode = "exact",
        num_bins: int = DEFAULT_NUM_BINS,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, num_bins=num_bins, fpr_limit=fpr_limit, **kwargs)

    def _single(self, counts: RankedCounts) -> float:
        return aupro(counts, self.fpr_limit)

    def curve(self) -> tuple[Tensor, Tensor]:
        """(FPR, PRO) at every operating point, from (0, 0) to (1, 1) (synced under DDP)."""
        return self._synced(lambda: pro_curve_points(self.ranked()))
