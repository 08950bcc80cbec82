"""Image-level metrics: AUROC, AP and F1-max of ``pred_score`` against ``label``.

Scores are kept per sample (a few bytes each), so image metrics are always exact, and duplicates padded in
by ``DistributedSampler`` are dropped by dataset index. Raw, unbounded scores are used as they are: nothing
is squashed through a sigmoid (which would turn every score above ~17 into the same float32 1.0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from anomaly_zoo.metrics.auroc import auroc
from anomaly_zoo.metrics.average_precision import average_precision
from anomaly_zoo.metrics.curves import RankedCounts, rank_ties
from anomaly_zoo.metrics.f1max import f1_max
from anomaly_zoo.metrics.samples import ListStateMetric, cat_state, unique_sample_order
from anomaly_zoo.metrics.validation import check_image_inputs

__all__ = ["ImageMetrics", "ImageAUROC", "ImageAP", "ImageF1Max"]


class ImageMetrics(ListStateMetric):
    """All image-level metrics at once. ``compute()`` returns a dict of float64 scalar tensors:
    ``auroc``, ``ap``, ``f1max``, ``f1max_threshold`` and ``n_samples`` (after de-duplication).
    Undefined metrics (one class missing) are NaN with a :class:`MetricUndefinedWarning`.
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_list_state("scores", torch.float64)
        self.add_list_state("labels", torch.uint8)
        self.add_list_state("index", torch.int64)

    def update(self, pred_score: Tensor, label: Tensor, index: Tensor | None = None) -> None:
        """Add a batch: ``pred_score`` float (N,), ``label`` 0/1 (N,), optional dataset ``index`` (N,)."""
        scores, labels, idx = check_image_inputs(pred_score, label, index)
        if scores.numel() == 0:
            return
        self.scores.append(scores)
        self.labels.append(labels)
        self.index.append(idx)

    def samples(self) -> tuple[Tensor, Tensor]:
        """De-duplicated ``(scores, labels)`` in dataset-index order (call on synced or local states)."""
        scores = cat_state(self.scores, torch.float64)
        labels = cat_state(self.labels, torch.uint8)
        index = cat_state(self.index, torch.int64)
        keep = unique_sample_order(index, agree=[("labels", labels, 0.0)])
        return scores[keep], labels[keep]

    def ranked(self) -> RankedCounts:
        scores, labels = self.samples()
        return rank_ties(scores, scores[labels.bool()])

    def compute(self) -> dict[str, Tensor]:
        counts = self.ranked()
        n = counts.n_pos + counts.n_neg
        out = {"n_samples": torch.tensor(float(n), dtype=torch.float64, device=self.device)}
        if n == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
            return {**out, "auroc": nan, "ap": nan, "f1max": nan, "f1max_threshold": nan}
        f1, threshold = f1_max(counts, "image F1-max")
        values = {
            "auroc": auroc(counts, "image AUROC"),
            "ap": average_precision(counts, "image AP"),
            "f1max": f1,
            "f1max_threshold": threshold,
        }
        return {
            **out,
            **{k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in values.items()},
        }


class _SingleImageMetric(ImageMetrics):
    def compute(self) -> Tensor:  # type: ignore[override]
        counts = self.ranked()
        if counts.n_pos + counts.n_neg == 0:
            raise ValueError(f"{type(self).__name__} received no samples: is the test set empty?")
        return torch.tensor(self._single(counts), dtype=torch.float64, device=self.device)

    def _single(self, counts: RankedCounts) -> float:
        raise NotImplementedError


class ImageAUROC(_SingleImageMetric):
    """Exact image-level AUROC of raw scores (ties merged). ``update(pred_score, label, index=None)``."""

    def _single(self, counts: RankedCounts) -> float:
        return auroc(counts, "image AUROC")


class ImageAP(_SingleImageMetric):
    """Exact image-level average precision. ``update(pred_score, label, index=None)``."""

    def _single(self, counts: RankedCounts) -> float:
        return average_precision(counts, "image AP")


class ImageF1Max(_SingleImageMetric):
    """Exact image-level F1-max; the threshold reaching it is in ``.threshold`` after ``compute()``."""

    threshold: float = float("nan")

    def _single(self, counts: RankedCounts) -> float:
        f1, self.threshold = f1_max(counts, "image F1-max")
        return f1
