"""Image and pixel F1, precision and recall at fixed (stored) thresholds, per category.

Complements the threshold-free metrics: these are the numbers a deployed detector reaches with the
thresholds it was calibrated with (never chosen on the test set). Counts are integer sums, so DDP sync
is torchmetrics' ``sum`` reduction. With per-category thresholds (a unified model scores each category on
its own scale) each image and its pixels are judged at its category's own thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import Metric

if TYPE_CHECKING:  # pandas is imported where a table is built: start-up (e.g. `predict`) never needs it
    import pandas as pd

__all__ = ["THRESHOLDED_COLUMNS", "ThresholdedMetrics"]

#: Columns added to the results table, in percent.
THRESHOLDED_COLUMNS = ("I-F1", "I-Precision", "I-Recall", "P-F1", "P-Precision", "P-Recall")


def _rates(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """(F1, precision, recall); NaN where the ratio is 0/0 (nothing predicted, or nothing to find)."""
    nan = float("nan")
    precision = tp / (tp + fp) if tp + fp > 0 else nan
    recall = tp / (tp + fn) if tp + fn > 0 else nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fn > 0 else nan
    return f1, precision, recall


class ThresholdedMetrics(Metric):
    """Per-category (TP, FP, FN) of images (``pred_score >= image_threshold``) and pixels (``map >= pixel_threshold``).

    ``update(output, batch)`` takes the Output and Batch dicts (maps at the mask's resolution, or scores
    alone); ``compute()`` returns a DataFrame indexed like :class:`~anomaly_zoo.metrics.AnomalyMetrics`'
    table (categories that received data, then ``"mean"``) with :data:`THRESHOLDED_COLUMNS` in percent.
    ``category_thresholds`` maps a category to its own (image, pixel) thresholds; other categories use the
    global ``image_threshold`` / ``pixel_threshold``. Comparisons are in float64 (as ``AnomalyModule.decide``).
    """

    full_state_update = False

    def __init__(self, categories: Sequence[str], image_threshold: float, pixel_threshold: float,
                 category_thresholds: Mapping[str, tuple[float, float]] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.categories = list(categories)
        self._position = {c: i for i, c in enumerate(self.categories)}
        self.image_threshold = float(image_threshold)
        self.pixel_threshold = float(pixel_threshold)
        own = dict(category_thresholds or {})
        # (n, 2) float64: each category's (image, pixel) thresholds, the global ones where it has none.
        self._thresholds = torch.tensor(
            [[float(v) for v in own.get(c, (self.image_threshold, self.pixel_threshold))] for c in self.categories],
            dtype=torch.float64).reshape(-1, 2)
        n = len(self.categories)
        # Columns: TP, FP, FN, number of images seen.
        self.add_state("image_counts", torch.zeros(n, 4, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("pixel_counts", torch.zeros(n, 4, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, output: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        labels = batch["label"].reshape(-1).to(self.device)
        cats = batch["category"]
        if isinstance(cats, str):
            cats = [cats] * labels.numel()
        position = torch.tensor([self._position[c] for c in cats], device=self.device)
        thresholds = self._thresholds.to(self.device)[position]  # (B, 2): the deciding thresholds per image
        if output.get("pred_score") is not None:
            predicted = output["pred_score"].reshape(-1).to(self.device).double() >= thresholds[:, 0]
            truth = labels == 1
            self.image_counts.index_add_(0, position, self._counts(predicted, truth))
        if output.get("anomaly_map") is not None:
            maps = output["anomaly_map"].to(self.device)
            predicted = maps.flatten(1).double() >= thresholds[:, 1:]
            truth = batch["mask"].to(self.device).flatten(1).bool()
            self.pixel_counts.index_add_(0, position, self._counts(predicted, truth))

    @staticmethod
    def _counts(predicted: Tensor, truth: Tensor) -> Tensor:
        """(B, 4) int64: TP, FP, FN per sample (summed over pixels for maps), and 1 for the sample count."""
        if predicted.ndim == 1:
            predicted, truth = predicted[:, None], truth[:, None]
        tp = (predicted & truth).sum(1)
        fp = (predicted & ~truth).sum(1)
        fn = (~predicted & truth).sum(1)
        return torch.stack([tp, fp, fn, torch.ones_like(tp)], 1).to(torch.int64)

    def compute(self) -> pd.DataFrame:
        import pandas as pd
        rows = {}
        for i, category in enumerate(self.categories):
            image, pixel = self.image_counts[i].tolist(), self.pixel_counts[i].tolist()
            if image[3] == 0 and pixel[3] == 0:
                continue
            rows[category] = [100.0 * v for v in (*_rates(*image[:3]), *_rates(*pixel[:3]))]
        table = pd.DataFrame.from_dict(rows, orient="index", columns=list(THRESHOLDED_COLUMNS))
        if not table.empty:
            table.loc["mean"] = table.mean(axis=0, skipna=False)
        table.index.name = "category"
        return table
