"""Exact pixel store: every map and mask is kept, ranked once at ``compute`` (the MVTec AD reference numbers)."""

from __future__ import annotations

import torch
from torch import Tensor

from anomaly_zoo.metrics.curves import RankedCounts, rank_ties
from anomaly_zoo.metrics.pixel_store import PixelStore
from anomaly_zoo.metrics.pro import defect_pixels
from anomaly_zoo.metrics.samples import ListStateMetric, batch_index, cat_state, unique_sample_order
from anomaly_zoo.metrics.validation import PixelBatch

__all__ = ["ExactPixelStore"]


class ExactPixelStore(PixelStore):
    """Keeps every map and mask (4 + 1 bytes per pixel) and each sample's dataset index, on CPU.

    ``ranked()`` drops DDP padding duplicates by index, sorts all scores once and merges ties. Under DDP the
    states are gathered to rank 0 only (``root_states``), which computes alone: host memory, not GPU memory,
    holds the maps, and no rank but 0 ever holds another rank's maps.
    """

    mode = "exact"
    root_states = ("maps", "masks", "shapes", "index")

    def __init__(self, metric: ListStateMetric, with_pro: bool, num_bins: int) -> None:
        super().__init__(metric, with_pro, num_bins)
        metric.add_list_state("maps", torch.float32)
        metric.add_list_state("masks", torch.uint8)
        metric.add_list_state("shapes", torch.int64, (2,))
        metric.add_list_state("index", torch.int64)

    def update(self, batch: PixelBatch, index: Tensor | None) -> None:
        m, maps, masks = self.metric, batch.maps, batch.masks
        n, h, w = maps.shape
        # On CPU (a no-op there): a test set's maps do not fit on a GPU beside the model.
        m.maps.append(maps.reshape(-1).to("cpu", torch.float32))
        m.masks.append(masks.reshape(-1).to("cpu"))
        m.shapes.append(torch.tensor([[h, w]], dtype=torch.int64).expand(n, 2).clone())
        m.index.append(batch_index(index, n, maps.device).cpu())

    def ranked(self) -> RankedCounts:
        m = self.metric
        maps = cat_state(m.maps, torch.float32)
        masks = cat_state(m.masks, torch.uint8)
        shapes = cat_state(m.shapes, torch.int64, (2,))
        index = cat_state(m.index, torch.int64)
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
