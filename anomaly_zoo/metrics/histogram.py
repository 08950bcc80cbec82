"""Fixed-size score histograms on a canonical power-of-two grid, for streaming pixel metrics.

The score range is not known in advance, so the histogram adapts:

* Bin ``j`` of level ``k`` covers ``[j * 2**k, (j + 1) * 2**k)`` on a grid anchored at 0. A histogram is a
  window of ``num_bins`` consecutive bins ``j0 .. j0 + num_bins - 1`` of one level.
* The level and window are a pure function of the running (min, max): the finest level whose window
  starting at ``floor(min / 2**k)`` still reaches ``max``. When a batch widens the range, the histogram
  moves to a coarser level by merging whole bins (``j -> j >> d``), which is exact.
* Bin indices are ``floor(score * 2**-k) - j0``: a power-of-two scaling and a floor, both exact in float32,
  so the binning never depends on rounding. Hence the final histogram depends only on the data, not on
  batch order or on how samples are split across processes: DDP results equal single-process results.

Resolution is ``(max - min) / num_bins`` at worst 2x coarser (power-of-two rounding); the error it causes
in each metric is bounded a posteriori by the ``*_error_bound`` functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Grid",
    "canonical_grid",
    "bin_index",
    "rebin",
    "lower_edges",
    "cover_range",
    "merge_rank_histograms",
]


@dataclass(frozen=True)
class Grid:
    """Window of a power-of-two grid: bin ``i`` covers ``[(j0 + i) * 2**k, (j0 + i + 1) * 2**k)``."""

    k: int
    j0: int


def _floor_scaled(t: float, k: int) -> int:
    return math.floor(math.ldexp(t, -k))


def canonical_grid(tmin: float, tmax: float, num_bins: int) -> Grid:
    """The finest grid window of ``num_bins`` bins covering ``[tmin, tmax]`` (float32-representable values)."""
    if not (math.isfinite(tmin) and math.isfinite(tmax)) or tmin > tmax:
        raise ValueError(f"invalid score range [{tmin}, {tmax}]")
    # Bins much finer than float32 resolution are useless; this floor also keeps the scaled scores
    # (< 2**41) and 2**-k (k >= -126) representable in float32.
    magnitude_exp = math.frexp(max(abs(tmin), abs(tmax)))[1]
    k = max(magnitude_exp - 40, -126)
    span = tmax - tmin
    if span > 0:
        k = max(k, math.floor(math.log2(span / num_bins)) - 1)
    while _floor_scaled(tmax, k) - _floor_scaled(tmin, k) > num_bins - 1:
        k += 1
    return Grid(k=k, j0=_floor_scaled(tmin, k))


def bin_index(scores: Tensor, grid: Grid, offset: Tensor | None = None, offset_scale: int = 0) -> Tensor:
    """Local bin index of each score, int32, same shape; plus ``offset * offset_scale`` if given.

    Scores must lie in the range the grid was made for. The offset lets one ``bincount`` fill several
    histograms at once (e.g. the mask times ``num_bins`` puts defect pixels in a second histogram).
    """
    idx = scores * math.ldexp(1.0, -grid.k)  # exact: power-of-two scaling of a float32
    idx.floor_()
    # floor(s * 2^-k) and j0 are float32 integers within num_bins of each other: the difference is exact.
    idx.sub_(float(grid.j0))
    out = idx.to(torch.int32)
    if offset is not None:
        out.add_(offset.to(torch.int32), alpha=offset_scale)
    return out


def rebin(hist: Tensor, old: Grid, new: Grid) -> Tensor:
    """Move histogram(s) ``(..., B)`` from grid ``old`` to a coarser-or-equal grid ``new`` by merging bins."""
    shift = new.k - old.k
    if shift < 0:
        raise ValueError("can only rebin to a coarser grid")
    num_bins = hist.shape[-1]
    j = torch.arange(num_bins, dtype=torch.int64, device=hist.device) + old.j0
    local = torch.div(j, 2 ** min(shift, 62), rounding_mode="floor") - new.j0  # floor division = shift
    flat = hist.reshape(-1, num_bins)
    used = (flat != 0).any(0).nonzero()
    if used.numel() and (int(local[used[0]]) < 0 or int(local[used[-1]]) >= num_bins):
        raise RuntimeError("histogram rebinning out of range: the new grid does not cover the old data")
    # Unused bins may map outside the window; they hold zeros, so clamping them is harmless.
    local = local.clamp_(0, num_bins - 1).expand_as(flat)
    out = torch.zeros_like(flat).scatter_add_(1, local, flat)
    return out.reshape(hist.shape)


def lower_edges(grid: Grid, num_bins: int, device: torch.device | None = None) -> Tensor:
    """Lower edge of every bin (float64): the threshold of the operating point "score >= edge"."""
    j = torch.arange(num_bins, dtype=torch.float64, device=device) + grid.j0
    return j * math.ldexp(1.0, grid.k)


def cover_range(state: Any, lo: float, hi: float, num_bins: int) -> Grid:
    """Make ``state.hist`` cover [lo, hi], merging bins when the range grows; returns the grid.

    ``state`` is a torchmetrics ``Metric`` with the states ``hist`` (bins on the last axis), ``tmin``,
    ``tmax``, ``grid_k``, ``grid_j0`` and ``initialized`` (shared by the streaming pixel store and sPRO).
    """
    if int(state.initialized) == 0:
        grid, tmin, tmax = canonical_grid(lo, hi, num_bins), lo, hi
        state.initialized.fill_(1)
    else:
        old = Grid(int(state.grid_k), int(state.grid_j0))
        tmin, tmax = min(float(state.tmin), lo), max(float(state.tmax), hi)
        grid = canonical_grid(tmin, tmax, num_bins)
        if grid != old:
            state.hist = rebin(state.hist, old, grid)
    state.tmin.fill_(tmin)
    state.tmax.fill_(tmax)
    state.grid_k.fill_(grid.k)
    state.grid_j0.fill_(grid.j0)
    return grid


def merge_rank_histograms(state: Any, num_bins: int, local_dim: int) -> tuple[Tensor, Grid] | None:
    """``state.hist`` on one grid: as is when local (``local_dim`` axes), else every rank's rebinned.

    After a DDP sync the states are stacked over ranks and each rank may sit on its own grid; they are
    moved to the grid of the global range and summed. ``None`` when no rank saw a sample.
    """
    hist, init = state.hist, state.initialized
    if hist.dim() == local_dim:
        if int(init) == 0:
            return None
        return hist, Grid(int(state.grid_k), int(state.grid_j0))
    ranks = [r for r in range(hist.shape[0]) if int(init[r]) == 1]
    if not ranks:
        return None
    grid = canonical_grid(
        min(float(state.tmin[r]) for r in ranks), max(float(state.tmax[r]) for r in ranks), num_bins
    )
    merged = torch.zeros_like(hist[0])
    for r in ranks:
        merged += rebin(hist[r], Grid(int(state.grid_k[r]), int(state.grid_j0[r])), grid)
    return merged, grid
