"""Streaming pixel store: fixed-size adaptive histograms, whatever the number of images.

Three histograms (normal pixels, defect pixels, PRO weight of defect pixels; 24 bytes per bin). PRO region
weights are computed per image at update time (int64 fixed point, 2**-40). The score range adapts (see
:mod:`~anomaly_zoo.metrics.histogram`); the error bound is in :mod:`~anomaly_zoo.metrics.pixel`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anomaly_zoo.metrics.curves import RankedCounts
from anomaly_zoo.metrics.histogram import bin_index, cover_range, lower_edges, merge_rank_histograms
from anomaly_zoo.metrics.pixel_store import PixelStore
from anomaly_zoo.metrics.pro import PRO_WEIGHT_SCALE, defect_pixels
from anomaly_zoo.metrics.samples import ListStateMetric
from anomaly_zoo.metrics.validation import PixelBatch

__all__ = ["StreamingPixelStore"]

# Fixed-point PRO sums stay below 2**63 for fewer regions than this.
_MAX_REGIONS = 2**62 // PRO_WEIGHT_SCALE


class StreamingPixelStore(PixelStore):
    """Keeps histograms of scores (one row per class, plus PRO weights); cannot drop repeated samples."""

    mode = "streaming"

    def __init__(self, metric: ListStateMetric, with_pro: bool, num_bins: int) -> None:
        super().__init__(metric, with_pro, num_bins)
        rows = 3 if with_pro else 2  # normal count, defect count, PRO weight (fixed point)
        # No reduction: ranks may sit on different grids; ranked() moves them to a common one.
        metric.add_state("hist", torch.zeros(rows, num_bins, dtype=torch.int64), dist_reduce_fx=None)
        metric.add_state("tmin", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx=None)
        metric.add_state("tmax", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx=None)
        metric.add_state("grid_k", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
        metric.add_state("grid_j0", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
        metric.add_state("initialized", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)

    def update(self, batch: PixelBatch, index: Tensor | None) -> None:
        m = self.metric
        grid = cover_range(self.metric, batch.lo, batch.hi, self.num_bins)
        b = self.num_bins
        # One bincount for both classes: defect pixels land in bins b .. 2b-1.
        idx = bin_index(batch.maps, grid, offset=batch.masks, offset_scale=b)
        counts = torch.bincount(idx.view(-1), minlength=2 * b)
        m.hist[:2] += counts.view(2, b)
        if self.with_pro:
            bins, weights, n_regions = defect_pixels(idx, batch.masks, fixed_point=True)
            if n_regions:
                if int(m.n_regions) + n_regions >= _MAX_REGIONS:
                    raise OverflowError(f"more than {_MAX_REGIONS} defect regions: use mode='exact'")
                m.hist[2].index_add_(0, bins.long() - b, weights)
                m.n_regions += n_regions

    def ranked(self) -> RankedCounts:
        merged = merge_rank_histograms(self.metric, self.num_bins, local_dim=2)
        pro_row = self.with_pro
        if merged is None:
            empty = torch.zeros(0, dtype=torch.int64, device=self.metric.device)
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
            n_regions=int(self.metric.n_regions),
            exact=False,
        )
