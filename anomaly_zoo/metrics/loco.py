"""The MVTec LOCO AD report of one category: AU-sPRO and image AUROC per split (structural / logical).

As the official ``evaluate_experiment.py`` (v2.0): each split is evaluated on its anomalous images plus
all good images, and the category's value is the mean of the two splits. AU-sPRO is integrated up to
FPR 0.05, the limit the LOCO paper reports (Bergmann et al., IJCV 2022, Table 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import Metric

from anomaly_zoo.metrics.image import ImageMetrics
from anomaly_zoo.metrics.spro import LOCO_SPLITS, SPRO, SPROMode

if TYPE_CHECKING:  # pandas is imported where a table is built: start-up (e.g. `predict`) never needs it
    import pandas as pd

__all__ = ["LOCO_COLUMNS", "LOCOMetrics", "SPRO_FPR_LIMIT", "loco_table"]

SPRO_FPR_LIMIT = 0.05
_SHORT = {"structural_anomalies": "struct", "logical_anomalies": "logic"}
#: Extra results-table columns (percent): the mean AU-sPRO, then per split sPRO and image AUROC.
LOCO_COLUMNS = ("sPRO", "sPRO-struct", "sPRO-logic", "I-AUROC-struct", "I-AUROC-logic")


class LOCOMetrics(Metric):
    """AU-sPRO per split and its mean, and image AUROC per split, for one category.

    ``update(anomaly_map, pred_score, label, regions, saturation, split, index=None)`` with the batch keys
    of :class:`~anomaly_zoo.data.loco_defects.LOCODefectsDataset`. ``compute()`` returns
    ``{column: value in [0, 1]}`` for :data:`LOCO_COLUMNS` plus ``"sPRO bound"`` (streaming error bound).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        mode: SPROMode = "streaming",
        fpr_limit: float = SPRO_FPR_LIMIT,
        num_bins: int = 2**16,
        splits: Sequence[str] = LOCO_SPLITS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.splits = tuple(splits)
        self.spro = SPRO(fpr_limit=fpr_limit, mode=mode, num_bins=num_bins, splits=self.splits, **kwargs)
        # Image AUROC of one split: its anomalous images against every good image.
        self.image = torch.nn.ModuleList(ImageMetrics(**kwargs) for _ in self.splits)
        # dataset index -> split code of the images this process saw (local: scores sent later belong to
        # the same process's images).
        self._split_of: dict[int, int] = {}

    def update(
        self,
        anomaly_map: Tensor | None,
        pred_score: Tensor | None,
        label: Tensor,
        regions: Tensor | None,
        saturation: Tensor | None,
        split: Tensor | None,
        index: Tensor | None = None,
    ) -> None:
        """Either of ``anomaly_map`` / ``pred_score`` may be ``None``: set-level protocols stream the maps
        per batch (with the sPRO keys) and send the scores at epoch end with only ``label`` and ``index``;
        then each image's split is the one recorded for its ``index`` when its map came."""
        idx = None if index is None else torch.as_tensor(index).reshape(-1).cpu()
        if split is not None:
            split = torch.as_tensor(split).reshape(-1).cpu()
            if idx is not None:
                self._split_of.update(zip(idx.tolist(), split.tolist()))
        if anomaly_map is not None and regions is not None and split is not None:
            self.spro.update(anomaly_map, regions, saturation, split.to(anomaly_map.device), index)
        if pred_score is None:
            return
        if split is None:
            if idx is None or any(i not in self._split_of for i in idx.tolist()):
                return  # no split known for these images: their per-split image AUROC cannot be formed
            split = torch.tensor([self._split_of[i] for i in idx.tolist()])
        scores, labels = pred_score.reshape(-1), label.reshape(-1).to(pred_score.device)
        split = split.to(pred_score.device)
        for code, metric in enumerate(self.image, start=1):
            pick = ((split == 0) | (split == code)).nonzero().flatten()
            metric.update(scores[pick], labels[pick], None if idx is None else idx.to(pick.device)[pick])

    def compute(self) -> dict[str, float]:
        spro = {k: float(v) for k, v in self.spro.compute().items()}
        out = {"sPRO": spro["spro"], "sPRO bound": spro["spro_bound"]}
        for name, metric in zip(self.splits, self.image):
            short = _SHORT.get(name, name)
            out[f"sPRO-{short}"] = spro[f"spro_{name}"]
            out[f"I-AUROC-{short}"] = float(metric.compute()["auroc"])
        return out

    def reset(self) -> None:
        super().reset()
        self._split_of = {}
        self.spro.reset()
        for metric in self.image:
            metric.reset()


def loco_table(metrics: dict[str, LOCOMetrics]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(columns, details)`` DataFrames indexed by category: :data:`LOCO_COLUMNS` in percent, and the
    sPRO streaming error bound (percentage points). Every rank must call it (the syncs are collective)."""
    import pandas as pd
    values = {category: metric.compute() for category, metric in metrics.items()}
    table = pd.DataFrame.from_dict(
        {c: [100.0 * v[k] for k in LOCO_COLUMNS] for c, v in values.items()},
        orient="index",
        columns=list(LOCO_COLUMNS),
    )
    details = pd.DataFrame.from_dict(
        {c: {"sPRO bound": 100.0 * v["sPRO bound"]} for c, v in values.items()}, orient="index"
    )
    return table, details
