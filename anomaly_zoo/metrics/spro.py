"""Saturated Per-Region Overlap (sPRO) and its area AU-sPRO, as defined by the MVTec LOCO AD evaluation.

Definition (Bergmann et al., "Beyond Dents and Scratches", IJCV 2022, Sec. 4.2; official evaluation code
``mvtec_loco_ad_evaluation`` v2.0, ``src/metrics.py``, ``src/aggregation.py``, ``evaluate_experiment.py``):

* a *defect* is one ground-truth channel (one PNG of ``ground_truth/<type>/<image>/``), not a connected
  component: a defect may consist of several blobs, and defects of one image may overlap;
* each defect ``c`` has a saturation area ``s_c`` from the category's ``defects_config.json``:
  ``int(threshold * |c|)`` for a relative threshold, ``min(threshold, |c|)`` for an absolute one;
* at an anomaly threshold ``t``, ``sPRO_c(t) = min(|{p in c : score(p) >= t}| / s_c, 1)``; the curve's
  y value is the mean of ``sPRO_c`` over *all defects of the evaluated images*, its x value the FPR over all
  pixels that lie in no defect of their image;
* AU-sPRO integrates the curve from (0, 0) to ``fpr_limit`` (interpolating there) and divides by
  ``fpr_limit``; the LOCO paper reports ``fpr_limit = 0.05``;
* the official numbers are per split: *structural* = good + structural test images, *logical* = good +
  logical test images, and their mean ``0.5 * (structural + logical)``.

Computation. ``min(tp, s) / s`` grows by ``clamp(s - r, 0, 1) / s`` when the defect's ``r``-th best pixel
(0-based, by descending score) turns positive. So each defect pixel gets that weight, computed exactly per
image at ``update`` time, and the curve becomes ``cumsum(weights) / n_defects`` over descending
thresholds -- the PRO curve with other weights. Both modes then reuse the PRO machinery
(:mod:`~anomaly_zoo.metrics.pro`): ``exact`` ranks every score with ties merged; ``streaming`` bins the same
weights into fixed-size histograms (int64 fixed point, order- and DDP-independent), and its error is
bounded by :func:`~anomaly_zoo.metrics.pro.aupro_error_bound` (binned operating points are exact
operating points, since a pixel's weight never depends on its bin).

Deviations from the official script, both deliberate: the official curve samples ~50-2000 thresholds
adaptively (``curve_max_distance = 0.001``), ours uses every operating point (exact) or every histogram
bin (streaming, bounded error); and a saturation area of 0 (relative threshold times a defect area below
one pixel), where the official curve is NaN at its first point, counts as saturated by the first pixel.

Batch inputs: ``regions`` int (N,1,H,W) bit mask -- bit ``k`` set where defect ``k`` of the image covers
the pixel (up to 62 defects per image; :func:`pack_defect_regions`); ``saturation`` float (N,K) -- the
saturation area of defect ``k`` in pixels at the mask's resolution (0 for unused slots); ``split`` int
(N,) -- 0 for a normal image, ``i`` for an anomalous image of ``splits[i - 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from anomaly_zoo.metrics.curves import RankedCounts, rank_ties
from anomaly_zoo.metrics.histogram import bin_index, cover_range, lower_edges, merge_rank_histograms
from anomaly_zoo.metrics.pro import PRO_WEIGHT_SCALE, aupro, aupro_error_bound, pro_curve_points
from anomaly_zoo.metrics.samples import ListStateMetric, batch_index, cat_state, unique_sample_order
from anomaly_zoo.metrics.validation import warn_undefined

__all__ = [
    "LOCO_SPLITS",
    "MAX_DEFECTS",
    "SPRO",
    "pack_defect_regions",
    "spro_pixel_weights",
    "spro_curve",
    "spro_score",
]

#: The MVTec LOCO AD test splits, in the order of the ``split`` codes 1, 2.
LOCO_SPLITS = ("structural_anomalies", "logical_anomalies")
#: Defects per image a ``regions`` bit mask can hold (bits 0..61 of an int64; the sign bit stays clear).
MAX_DEFECTS = 62
_DEFAULT_NUM_BINS = 2**16
SPROMode = Literal["exact", "streaming"]


def pack_defect_regions(defect_masks: np.ndarray | Tensor) -> Tensor:
    """(K, H, W) boolean masks of one image's defects -> int64 (H, W) with bit ``k`` set inside defect ``k``."""
    masks = torch.as_tensor(np.asarray(defect_masks, dtype=bool))
    if masks.dim() != 3 or masks.shape[0] > MAX_DEFECTS:
        raise ValueError(f"defect masks must be (K, H, W) with K <= {MAX_DEFECTS}, got {tuple(masks.shape)}")
    bits = torch.ones(masks.shape[0], dtype=torch.int64) << torch.arange(masks.shape[0], dtype=torch.int64)
    return (masks.to(torch.int64) * bits[:, None, None]).sum(0)


def _squeeze(x: Tensor, name: str) -> Tensor:
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must have shape (N,H,W) or (N,1,H,W), got {tuple(x.shape)}")


def spro_pixel_weights(maps: Tensor, regions: Tensor, saturation: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel sPRO weights of a batch.

    Args:
        maps: float (N, H, W) scores.
        regions: int (N, H, W) defect bit masks.
        saturation: float (N, K) saturation areas (pixels) of the defects; slot ``k`` must be > 0 where
            bit ``k`` occurs (a value below one pixel is saturated by the first pixel).

    Returns:
        ``(defect (N, H, W) bool, weights (D,) float64, n_defects (N,) int64)``: the union of the defects,
        the summed weight over the defects covering each of its D pixels (in ``maps[defect]`` order:
        image-major, row-major), and the number of defects per image.
    """
    n = maps.shape[0]
    flat_reg = regions.reshape(n, -1)
    defect = regions != 0
    n_defects = torch.zeros(n, dtype=torch.int64, device=maps.device)
    image, pixel = torch.nonzero(flat_reg, as_tuple=True)  # the D defect pixels, in boolean-mask order
    weights = torch.zeros(image.numel(), dtype=torch.float64, device=maps.device)
    if image.numel() == 0:
        return defect, weights, n_defects
    bits, scores = flat_reg[image, pixel], maps.reshape(n, -1)[image, pixel].double()
    top = int(bits.max()).bit_length()  # highest bit used in the batch
    if bool((bits < 0).any()) or top > MAX_DEFECTS:
        raise ValueError(f"regions must be non-negative bit masks of at most {MAX_DEFECTS} defects")
    if saturation.shape[1] < top:
        raise ValueError(
            f"regions use {top} defect bits but saturation has only {saturation.shape[1]} slots per image"
        )
    for k in range(top):
        members = torch.nonzero((bits >> k) & 1).flatten()  # defect pixels inside defect k of their image
        if members.numel() == 0:
            continue
        # Order by image, then by descending score (two stable sorts), and rank pixels within each image.
        order = members[torch.argsort(scores[members], descending=True, stable=True)]
        order = order[torch.argsort(image[order], stable=True)]
        owner = image[order]
        counts = torch.bincount(owner, minlength=n)
        rank = torch.arange(order.numel(), device=maps.device) - (torch.cumsum(counts, 0) - counts)[owner]
        sat = saturation[owner, k].to(torch.float64)
        if not bool(((sat > 0) & torch.isfinite(sat)).all()):
            bad = int(owner[~((sat > 0) & torch.isfinite(sat))][0])
            raise ValueError(
                f"image {bad} of the batch has defect {k} but its saturation area is {float(saturation[bad, k])}"
            )
        # min(tp, s)/s grows by clamp(s - r, 0, 1)/s when the r-th best pixel turns positive; ties share a
        # threshold, so how ties are ordered does not change any operating point.
        weights.index_add_(0, order, (sat - rank).clamp_(0.0, 1.0) / sat)
        n_defects += counts > 0
    return defect, weights, n_defects


class SPRO(ListStateMetric):
    """AU-sPRO per split (MVTec LOCO AD definition) and their mean.

    Args:
        fpr_limit: integration limit of the sPRO curve (the area is divided by it); LOCO reports 0.05.
        mode: ``"exact"`` (keeps every map) or ``"streaming"`` (fixed-size histograms, bounded error).
        num_bins: histogram size in streaming mode.
        splits: names of the anomalous-image splits (``split`` codes 1, 2, ...); normal images (code 0)
            belong to every split, as in the official evaluation.

    ``update(anomaly_map, regions, saturation, split=None, index=None)``: see the module docstring; without
    ``split``, images with a defect are split 1 and the others normal. ``compute()`` returns float64 scalars
    ``spro`` (mean over the splits that received anomalous images), ``spro_<split>`` per split, the
    streaming error bounds ``*_bound`` (0 in exact mode) and ``n_images``.
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        fpr_limit: float = 0.05,
        mode: SPROMode = "exact",
        num_bins: int = _DEFAULT_NUM_BINS,
        splits: Sequence[str] = LOCO_SPLITS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("exact", "streaming"):
            raise ValueError(f"mode must be 'exact' or 'streaming', got {mode!r}")
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        if num_bins < 16:
            raise ValueError(f"num_bins must be at least 16, got {num_bins}")
        self.splits = tuple(splits)
        if not self.splits:
            raise ValueError("splits must name at least one split")
        self.mode = mode
        self.fpr_limit = float(fpr_limit)
        self.num_bins = int(num_bins)
        groups = len(self.splits) + 1
        if mode == "exact":
            self.add_list_state("maps", torch.float32)  # flattened, image after image
            self.add_list_state("defect", torch.uint8)
            self.add_list_state("weights", torch.float64)  # defect pixels only, row-major per image
            self.add_list_state("shapes", torch.int64, (2,))
            self.add_list_state("n_defects", torch.int64)
            self.add_list_state("group", torch.int64)
            self.add_list_state("index", torch.int64)
        else:
            # Per split code: normal-pixel counts, defect-pixel counts, sPRO weights (fixed point). Not
            # reduced: ranks may sit on different grids; compute() moves them to a common one. (PixelMetrics
            # keeps the same kind of grid, but its states are private to it.)
            self.add_state(
                "hist", torch.zeros(groups, 3, self.num_bins, dtype=torch.int64), dist_reduce_fx=None
            )
            self.add_state("tmin", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx=None)
            self.add_state("tmax", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx=None)
            self.add_state("grid_k", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
            self.add_state("grid_j0", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
            self.add_state("initialized", torch.tensor(0, dtype=torch.int64), dist_reduce_fx=None)
            self.add_state("group_defects", torch.zeros(groups, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------ update
    def update(
        self,
        anomaly_map: Tensor,
        regions: Tensor,
        saturation: Tensor,
        split: Tensor | None = None,
        index: Tensor | None = None,
    ) -> None:
        maps = _squeeze(anomaly_map.detach(), "anomaly_map").float()
        reg = _squeeze(torch.as_tensor(regions).detach(), "regions").to(maps.device)
        if reg.is_floating_point() or reg.dtype == torch.bool:
            raise ValueError(f"regions must be an integer bit mask, got dtype {reg.dtype}")
        reg = reg.to(torch.int64)
        if maps.shape != reg.shape:
            raise ValueError(
                f"anomaly_map {tuple(maps.shape)} and regions {tuple(reg.shape)} do not match: the model "
                "must return the map at the mask's resolution."
            )
        n = maps.shape[0]
        if n == 0:
            return
        if not bool(torch.isfinite(maps).all()):
            raise ValueError("anomaly_map contains NaN/inf values; anomaly scores must be finite.")
        sat = torch.as_tensor(saturation).detach().to(maps.device, torch.float64).reshape(n, -1)
        defect, weights, n_defects = spro_pixel_weights(maps, reg, sat)
        if split is None:
            group = (n_defects > 0).to(torch.int64)
        else:
            group = torch.as_tensor(split, device=maps.device).reshape(-1).to(torch.int64)
            if group.numel() != n:
                raise ValueError(f"split has {group.numel()} entries but the batch has {n} maps")
            if bool(((group < 0) | (group > len(self.splits))).any()):
                raise ValueError(
                    f"split codes must be 0 (normal) .. {len(self.splits)}, got {group.tolist()}"
                )
            if bool(((group == 0) & (n_defects > 0)).any()):
                raise ValueError("an image with split code 0 (normal) has defect regions")
        self.n_images += n
        if self.mode == "exact":
            self._update_exact(maps, defect, weights, n_defects, group, index)
        else:
            self._update_streaming(maps, defect, weights, n_defects, group)

    def _update_exact(
        self, maps: Tensor, defect: Tensor, weights: Tensor, n_defects: Tensor, group: Tensor, index: Any
    ) -> None:
        n, h, w = maps.shape
        idx = batch_index(index, n, maps.device)
        self.maps.append(maps.reshape(-1))
        self.defect.append(defect.reshape(-1).to(torch.uint8))
        self.weights.append(weights)
        self.shapes.append(torch.tensor([[h, w]], dtype=torch.int64, device=maps.device).expand(n, 2).clone())
        self.n_defects.append(n_defects)
        self.group.append(group)
        self.index.append(idx)

    def _update_streaming(
        self, maps: Tensor, defect: Tensor, weights: Tensor, n_defects: Tensor, group: Tensor
    ) -> None:
        lo, hi = (float(v) for v in torch.aminmax(maps))
        grid = cover_range(self, lo, hi, self.num_bins)
        b = self.num_bins
        idx = bin_index(maps, grid).long()  # (N, H, W)
        # One bincount for all (split, class) histograms: row = 3 * group + is_defect.
        row = (3 * group)[:, None, None] + defect.long()
        counts = torch.bincount((row * b + idx).reshape(-1), minlength=3 * (len(self.splits) + 1) * b)
        counts = counts.view(-1, 3, b)
        self.hist[:, :2] += counts[:, :2]
        fixed = torch.round(weights * PRO_WEIGHT_SCALE).to(torch.int64)
        target = (3 * group[:, None, None] + 2).expand_as(idx)[defect] * b + idx[defect]
        self.hist.view(-1).index_add_(0, target, fixed)
        self.group_defects.index_add_(0, group, n_defects)

    # ----------------------------------------------------------------- compute
    def ranked(self, split: int) -> RankedCounts:
        """Ranked counts of split code ``split`` (1-based): its anomalous images plus all normal images."""
        return self._ranked_exact(split) if self.mode == "exact" else self._ranked_streaming(split)

    def _ranked_exact(self, split: int) -> RankedCounts:
        maps = cat_state(self.maps, torch.float32)
        defect = cat_state(self.defect, torch.uint8)
        weights = cat_state(self.weights, torch.float64)
        shapes = cat_state(self.shapes, torch.int64, (2,))
        n_defects = cat_state(self.n_defects, torch.int64)
        group = cat_state(self.group, torch.int64)
        index = cat_state(self.index, torch.int64)
        keep = unique_sample_order(index, agree=[("image sizes", shapes, 0.0), ("split", group, 0.0)])
        sizes = shapes.prod(1)
        starts = torch.cumsum(sizes, 0) - sizes
        # Defect pixels per image (weights are stored for defect pixels only).
        csum = torch.cat([sizes.new_zeros(1), torch.cumsum(defect.to(torch.int64), 0)])
        n_def_px = csum[starts + sizes] - csum[starts]
        wstarts = torch.cumsum(n_def_px, 0) - n_def_px
        chosen = [i for i in keep.tolist() if int(group[i]) in (0, split)]
        if not chosen:
            empty = torch.zeros(0, dtype=torch.float32)
            return rank_ties(empty, empty, empty.double(), 0)
        # Canonical (dataset-index) order: float64 weight sums do not depend on how samples were split.
        sel_maps = torch.cat([maps[starts[i] : starts[i] + sizes[i]] for i in chosen])
        sel_defect = torch.cat([defect[starts[i] : starts[i] + sizes[i]] for i in chosen]).bool()
        sel_w = torch.cat([weights[wstarts[i] : wstarts[i] + n_def_px[i]] for i in chosen])
        n_regions = int(n_defects[chosen].sum())
        return rank_ties(sel_maps, sel_maps[sel_defect], sel_w, n_regions)

    def _ranked_streaming(self, split: int) -> RankedCounts:
        merged = merge_rank_histograms(self, self.num_bins, local_dim=3)
        n_regions = int(self.group_defects[split])
        if merged is None:
            empty = torch.zeros(0, dtype=torch.int64, device=self.device)
            return RankedCounts(empty.double(), empty, empty, empty, PRO_WEIGHT_SCALE, 0, False)
        hist, grid = merged
        h = hist[0] + hist[split]
        used = (h[0] + h[1]) > 0
        edges = lower_edges(grid, self.num_bins, h.device)
        return RankedCounts(
            thresholds=edges[used].flip(0),
            neg=h[0][used].flip(0),
            pos=h[1][used].flip(0),
            pro=h[2][used].flip(0),
            pro_scale=float(PRO_WEIGHT_SCALE),
            n_regions=n_regions,
            exact=False,
        )

    def _split_value(self, split: int) -> tuple[float, float, int]:
        """(AU-sPRO, streaming error bound, number of defects) of split code ``split``."""
        counts = self.ranked(split)
        name = f"sPRO ({self.splits[split - 1]})"
        if counts.n_regions == 0:
            return warn_undefined(name, "no defect in this split"), 0.0, 0
        if counts.n_neg == 0:
            return warn_undefined(name, "no normal pixel in this split"), 0.0, counts.n_regions
        value = aupro(counts, self.fpr_limit)
        return value, aupro_error_bound(counts, self.fpr_limit), counts.n_regions

    @property
    def root_states(self) -> tuple[str, ...]:
        """Exact mode: every map goes to rank 0 only under DDP, which computes (``metrics/root_gather.py``)."""
        return tuple(self._list_specs) if self.mode == "exact" else ()

    def compute(self) -> dict[str, Tensor]:
        out = self._on_root(self._values)
        return {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in out.items()}

    def _values(self) -> dict[str, float]:
        out: dict[str, float] = {"n_images": float(self.n_images)}
        per_split = []
        for code, name in enumerate(self.splits, start=1):
            value, bound, n_regions = self._split_value(code)
            out[f"spro_{name}"], out[f"spro_{name}_bound"] = value, bound
            if n_regions > 0:
                per_split.append((value, bound))
        if per_split:
            out["spro"] = sum(v for v, _ in per_split) / len(per_split)
            out["spro_bound"] = sum(b for _, b in per_split) / len(per_split)
        else:
            out["spro"], out["spro_bound"] = float("nan"), 0.0
        return out

    def curve(self, split: int = 1) -> tuple[Tensor, Tensor]:
        """(FPR, mean sPRO) at every operating point of split code ``split``, from (0, 0) to (1, 1)."""
        return self._synced(lambda: pro_curve_points(self.ranked(split)))


def spro_curve(anomaly_map: Tensor, regions: Tensor, saturation: Tensor) -> tuple[Tensor, Tensor]:
    """Exact sPRO curve (FPR, mean sPRO) of a whole set given at once, including (0, 0) and (1, 1)."""
    metric = SPRO(mode="exact", splits=("all",))
    metric.update(anomaly_map, regions, saturation)
    return pro_curve_points(metric.ranked(1))


def spro_score(anomaly_map: Tensor, regions: Tensor, saturation: Tensor, fpr_limit: float = 0.05) -> float:
    """Exact AU-sPRO of a whole set given at once, all anomalous images in one split."""
    metric = SPRO(fpr_limit=fpr_limit, mode="exact", splits=("all",))
    metric.update(anomaly_map, regions, saturation)
    return float(metric.compute()["spro"])
