"""Pixel-level metrics (AUROC, AP, F1-max, AUPRO) from anomaly maps and ground-truth masks.

Two modes share one code path from :class:`~anomaly_zoo.metrics.curves.RankedCounts` on:

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
from anomaly_zoo.metrics.curves import RankedCounts, rank_ties
from anomaly_zoo.metrics.f1max import f1_max, f1_max_error_bound
from anomaly_zoo.metrics.histogram import Grid, bin_index, canonical_grid, lower_edges, rebin
from anomaly_zoo.metrics.pro import (
    PRO_WEIGHT_SCALE,
    aupro,
    aupro_error_bound,
    defect_pixels,
    pro_curve_points,
)
from anomaly_zoo.metrics.samples import ListStateMetric, cat_state, unique_sample_order
from anomaly_zoo.metrics.validation import PixelBatch, check_pixel_batch

__all__ = ["DEFAULT_NUM_BINS", "PixelMetrics", "PixelAUROC", "PixelAP", "PixelF1Max", "AUPRO"]

DEFAULT_NUM_BINS = 2**16
PixelMode = Literal["exact", "streaming"]
# Fixed-point PRO sums stay below 2**63 for fewer regions than this.
_MAX_REGIONS = 2**62 // PRO_WEIGHT_SCALE


class PixelMetrics(ListStateMetric):
    """All pixel-level metrics at once.

    Args:
        mode: ``"exact"`` or ``"streaming"`` (see the module docstring).
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
        if mode not in ("exact", "streaming"):
            raise ValueError(f"mode must be 'exact' or 'streaming', got {mode!r}")
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        if num_bins < 16:
            raise ValueError(f"num_bins must be at least 16, got {num_bins}")
        self.mode = mode
        self.fpr_limit = float(fpr_limit)
        self.num_bins = int(num_bins)
        self.with_pro = with_pro
        if mode == "exact":
            self.add_list_state("maps", torch.float32)
            self.add_list_state("masks", torch.uint8)
            self.add_list_state("shapes", torch.int64, (2,))
            self.add_list_state("index", torch.int64)
        else:
            rows = 3 if with_pro else 2  # normal count, defect count, PRO weight (fixed point)
            # No reduction: ranks may sit on different grids; compute() moves them to a common one.
            self.add_state("hist", torch.zeros(rows, self.num_bins, dtype=torch.int64), dist_reduce_fx=None)
            self.add_state("tmin", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx=None)
            self.add_state("tmax", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx=None)
            self.add_state("grid_k", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
            self.add_state("grid_j0", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
            self.add_state("initialized", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
        self.add_state("n_regions", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------ update
    def update(self, anomaly_map: Tensor, mask: Tensor, index: Tensor | None = None) -> None:
        batch = check_pixel_batch(anomaly_map, mask)
        if batch.maps.numel() == 0:
            return
        self.n_images += batch.maps.shape[0]
        if self.mode == "exact":
            self._update_exact(batch.maps, batch.masks, index)
        else:
            self._update_streaming(batch)

    def _update_exact(self, maps: Tensor, masks: Tensor, index: Tensor | None) -> None:
        n, h, w = maps.shape
        if index is None:
            idx = torch.full((n,), -1, dtype=torch.int64, device=maps.device)
        else:
            idx = torch.as_tensor(index, device=maps.device).reshape(-1).to(torch.int64)
            if idx.numel() != n:
                raise ValueError(f"index has {idx.numel()} entries but the batch has {n} maps")
        self.maps.append(maps.reshape(-1))
        self.masks.append(masks.reshape(-1))
        self.shapes.append(torch.tensor([[h, w]], dtype=torch.int64, device=maps.device).expand(n, 2).clone())
        self.index.append(idx)

    def _cover(self, lo: float, hi: float) -> Grid:
        """Make the histogram grid cover [lo, hi], merging bins if the range grows."""
        if int(self.initialized) == 0:
            grid = canonical_grid(lo, hi, self.num_bins)
            tmin, tmax = lo, hi
            self.initialized.fill_(1)
        else:
            old = Grid(int(self.grid_k), int(self.grid_j0))
            tmin, tmax = min(float(self.tmin), lo), max(float(self.tmax), hi)
            grid = canonical_grid(tmin, tmax, self.num_bins)
            if grid != old:
                self.hist = rebin(self.hist, old, grid)
        self.tmin.fill_(tmin)
        self.tmax.fill_(tmax)
        self.grid_k.fill_(grid.k)
        self.grid_j0.fill_(grid.j0)
        return grid

    def _update_streaming(self, batch: PixelBatch) -> None:
        grid = self._cover(batch.lo, batch.hi)
        b = self.num_bins
        # One bincount for both classes: defect pixels land in bins b .. 2b-1.
        idx = bin_index(batch.maps, grid, offset=batch.masks, offset_scale=b)
        counts = torch.bincount(idx.view(-1), minlength=2 * b)
        self.hist[:2] += counts.view(2, b)
        if self.with_pro:
            bins, weights, n_regions = defect_pixels(idx, batch.masks, fixed_point=True)
            if n_regions:
                if int(self.n_regions) + n_regions >= _MAX_REGIONS:
                    raise OverflowError(f"more than {_MAX_REGIONS} defect regions: use mode='exact'")
                self.hist[2].index_add_(0, bins.long() - b, weights)
                self.n_regions += n_regions

    # ----------------------------------------------------------------- compute
    def ranked(self) -> RankedCounts:
        """Ranked counts of the current (local, or synced inside ``compute``) states."""
        return self._ranked_exact() if self.mode == "exact" else self._ranked_streaming()

    def _ranked_exact(self) -> RankedCounts:
        maps = cat_state(self.maps, torch.float32)
        masks = cat_state(self.masks, torch.uint8)
        shapes = cat_state(self.shapes, torch.int64, (2,))
        index = cat_state(self.index, torch.int64)
        sizes = shapes.prod(1)
        keep = unique_sample_order(index, agree=[("image sizes", shapes, 0.0)])
        if keep.numel() != index.numel() or bool(
            (keep != torch.arange(keep.numel(), device=keep.device)).any()
        ):
            # Canonical order (by dataset index) makes float64 PRO sums identical however samples were split.
            starts = (torch.cumsum(sizes, 0) - sizes).tolist()
            lengths = sizes.tolist()
            order = keep.tolist()
            maps = torch.cat([maps[starts[i] : starts[i] + lengths[i]] for i in order])
            masks = torch.cat([masks[starts[i] : starts[i] + lengths[i]] for i in order])
            shapes, sizes = shapes[keep], sizes[keep]
        if not self.with_pro:
            return rank_ties(maps, maps[masks.bool()])
        starts = torch.cumsum(sizes, 0) - sizes
        scores, weights, n_regions = [], [], 0
        for h, w in torch.unique(shapes, dim=0).tolist():
            same = ((shapes[:, 0] == h) & (shapes[:, 1] == w)).nonzero().squeeze(1)
            if same.numel() == shapes.shape[0]:
                group_maps, group_masks = maps.view(-1, h, w), masks.view(-1, h, w)
            else:
                group_maps = torch.stack([maps[s : s + h * w].view(h, w) for s in starts[same].tolist()])
                group_masks = torch.stack([masks[s : s + h * w].view(h, w) for s in starts[same].tolist()])
            s, wt, r = defect_pixels(group_maps, group_masks)
            scores.append(s)
            weights.append(wt)
            n_regions += r
        if not scores:  # no image at all
            return rank_ties(maps, maps.new_zeros(0), maps.new_zeros(0, dtype=torch.float64), 0)
        return rank_ties(maps, torch.cat(scores), torch.cat(weights), n_regions)

    def _merged_histogram(self) -> tuple[Tensor, Grid] | None:
        hist, init = self.hist, self.initialized
        if hist.dim() == 2:  # local state
            if int(init) == 0:
                return None
            return hist, Grid(int(self.grid_k), int(self.grid_j0))
        # Synced: states are stacked over ranks; bring every rank to the grid of the global range.
        ranks = [r for r in range(hist.shape[0]) if int(init[r]) == 1]
        if not ranks:
            return None
        grid = canonical_grid(
            min(float(self.tmin[r]) for r in ranks), max(float(self.tmax[r]) for r in ranks), self.num_bins
        )
        merged = torch.zeros_like(hist[0])
        for r in ranks:
            merged += rebin(hist[r], Grid(int(self.grid_k[r]), int(self.grid_j0[r])), grid)
        return merged, grid

    def _ranked_streaming(self) -> RankedCounts:
        merged = self._merged_histogram()
        pro_row = self.with_pro
        if merged is None:
            empty = torch.zeros(0, dtype=torch.int64, device=self.device)
            return RankedCounts(
                empty.double(), empty, empty, empty if pro_row else None, PRO_WEIGHT_SCALE, 0, False
            )
        hist, grid = merged
        used = (hist[0] + hist[1]) > 0  # an empty bin is no operating point
        edges = lower_edges(grid, self.num_bins, hist.device)
        return RankedCounts(
            thresholds=edges[used].flip(0),
            neg=hist[0][used].flip(0),
            pos=hist[1][used].flip(0),
            pro=hist[2][used].flip(0) if pro_row else None,
            pro_scale=float(PRO_WEIGHT_SCALE),
            n_regions=int(self.n_regions),
            exact=False,
        )

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

    def compute(self) -> dict[str, Tensor]:
        counts = self.ranked()
        out = {"n_images": float(self.n_images)}
        if counts.n_pos + counts.n_neg == 0:
            nan = float("nan")
            keys = ["auroc", "ap", "f1max", "f1max_threshold"] + (["aupro"] if self.with_pro else [])
            out.update({k: nan for k in keys})
        else:
            out.update(self._values(counts))
        return {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in out.items()}

    def _synced(self, fn: Any) -> Any:
        """Run ``fn()`` on states synced across processes (like ``compute``)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return fn()

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
        counts = self.ranked()
        if counts.n_pos + counts.n_neg == 0:
            raise ValueError(f"{type(self).__name__} received no pixels: is the test set empty?")
        return torch.tensor(self._single(counts), dtype=torch.float64, device=self.device)

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
