"""The interface of a pixel store: how :class:`~anomaly_zoo.metrics.PixelMetrics` keeps the pixels it has seen.

One implementation per mode, each in its own file: :class:`~anomaly_zoo.metrics.pixel_exact.ExactPixelStore`
(every map and mask) and :class:`~anomaly_zoo.metrics.pixel_streaming.StreamingPixelStore` (fixed-size
histograms). A store registers its states on the metric that owns it (so torchmetrics syncs them under DDP)
and turns them into :class:`~anomaly_zoo.metrics.curves.RankedCounts`, from which every pixel metric is
computed the same way whatever the mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from anomaly_zoo.metrics.curves import RankedCounts
from anomaly_zoo.metrics.samples import ListStateMetric
from anomaly_zoo.metrics.validation import PixelBatch

__all__ = ["PixelStore"]


class PixelStore(ABC):
    """Keeps a metric's pixels between ``update`` and ``compute``; its states live on ``metric``.

    Args:
        metric: the owning metric; the store declares its states there (``add_state`` / ``add_list_state``).
        with_pro: also keep what AUPRO needs (connected components of the masks).
        num_bins: histogram size (used by the streaming store only).
    """

    #: ``"exact"`` or ``"streaming"``: the ``mode`` name that selects this store.
    mode: str = ""
    #: List states that, under DDP, are gathered to rank 0 only (``metrics/root_gather.py``) instead of
    #: all-gathered to every rank; the owner then computes on rank 0 and broadcasts the result.
    root_states: tuple[str, ...] = ()

    def __init__(self, metric: ListStateMetric, with_pro: bool, num_bins: int) -> None:
        self.metric = metric
        self.with_pro = with_pro
        self.num_bins = num_bins

    @abstractmethod
    def update(self, batch: PixelBatch, index: Tensor | None) -> None:
        """Add a validated, non-empty batch; ``index`` (N,) is the samples' dataset index or ``None``."""

    @abstractmethod
    def ranked(self) -> RankedCounts:
        """Ranked counts of the metric's current (local, or synced inside ``compute``) states."""
