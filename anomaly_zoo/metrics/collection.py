"""``AnomalyMetrics``: every image and pixel metric, per category, as one results table."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import Metric

from anomaly_zoo.metrics.image import ImageMetrics
from anomaly_zoo.metrics.loco import LOCOMetrics, loco_table
from anomaly_zoo.metrics.pixel import DEFAULT_NUM_BINS, PixelMetrics, PixelMode
from anomaly_zoo.metrics.table import COLUMNS

if TYPE_CHECKING:  # pandas is imported where a table is built: start-up (e.g. `predict`) never needs it
    import pandas as pd

__all__ = ["AnomalyMetrics"]

_BEFORE_UPDATE = r".*was called before the ``update`` method.*"


class AnomalyMetrics(Metric):
    """Image AUROC/AP/F1-max and pixel AUROC/AP/F1-max/AUPRO for each category of a test set.

    Args:
        categories: the category names, in table order.
        pixel_mode: ``"streaming"`` (bounded memory, default) or ``"exact"`` (keeps all maps).
        fpr_limit: AUPRO integration limit.
        num_bins: histogram size of streaming mode.
        bound_warning: warn when a streaming metric's error bound exceeds this (default: 0.05 percentage
            points, half the last digit of the 1-decimal table).
        **kwargs: torchmetrics ``Metric`` options (e.g. ``compute_on_cpu``, ``process_group``).

    ``update(output, batch)`` takes the model output (``anomaly_map`` (B,1,H,W) at mask resolution,
    ``pred_score`` (B,)) and the batch (``mask``, ``label``, ``category``, ``index``). ``compute()`` returns a
    DataFrame indexed by category (only categories that received data, in the given order) plus a final
    ``"mean"`` row (unweighted mean over categories, as papers report), with :data:`COLUMNS` in percent.
    mAD is the mean of the seven metrics. An undefined metric (e.g. a category without anomalous images)
    is NaN, with a warning, and makes its row's mAD and the mean row NaN too.
    Per-category F1 thresholds, sample counts and streaming error bounds are in :attr:`details` after
    ``compute()``.

    Image metrics and exact pixel metrics drop repeated samples by ``batch["index"]``; streaming pixel
    metrics cannot, so they assume a non-padding distributed sampler and warn if duplicates were seen.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        categories: Sequence[str],
        pixel_mode: PixelMode = "streaming",
        fpr_limit: float = 0.3,
        num_bins: int = DEFAULT_NUM_BINS,
        bound_warning: float = 5e-4,
        **kwargs: Any,
    ) -> None:
        # No cached child values: under DDP a child that one rank did not update since its last compute would
        # return its cache there and skip the sync the other ranks run (a hang, or a mismatched collective).
        child_kwargs = {"compute_with_cache": False, **kwargs}
        # The DataFrame is mutable: build a fresh one on every compute() rather than caching it.
        kwargs.setdefault("compute_with_cache", False)
        super().__init__(**kwargs)
        names = [categories] if isinstance(categories, str) else list(categories)
        if not names or not all(isinstance(c, str) for c in names):
            raise ValueError(f"categories must be a non-empty sequence of names, got {categories!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"categories contain duplicates: {names}")
        self.categories = names
        self.pixel_mode = pixel_mode
        self.bound_warning = bound_warning
        self._position = {c: i for i, c in enumerate(names)}
        self.image = torch.nn.ModuleList(ImageMetrics(**child_kwargs) for _ in names)
        self.pixel = torch.nn.ModuleList(
            PixelMetrics(mode=pixel_mode, fpr_limit=fpr_limit, num_bins=num_bins, **child_kwargs)
            for _ in names
        )
        # MVTec LOCO sPRO and per-split image AUROC: made when batches carry the sPRO keys (metrics/loco.py).
        self.loco = torch.nn.ModuleDict()
        self._loco_kwargs = {"mode": pixel_mode, "num_bins": num_bins, **child_kwargs}
        self.details: pd.DataFrame | None = None

    def update(self, output: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        # One of the two may be absent: set-level protocols stream the maps per batch and finish the
        # scores at epoch end (models/components/set_level.py).
        maps, scores = output.get("anomaly_map"), output.get("pred_score")
        try:
            if maps is None and scores is None:
                raise KeyError("'anomaly_map' and 'pred_score'")
            labels, cats = batch["label"], batch["category"]
            masks = batch["mask"] if maps is not None else None
        except KeyError as err:
            raise KeyError(
                f"AnomalyMetrics.update needs output['anomaly_map'], output['pred_score'], batch['mask'], "
                f"batch['label'] and batch['category']; missing {err}"
            ) from None
        index = batch.get("index")
        n = int(labels.shape[0])
        if isinstance(cats, str):
            cats = [cats] * n
        n_maps = n if maps is None else maps.shape[0]
        n_scores = n if scores is None else scores.reshape(-1).shape[0]
        if len(cats) != n or n_maps != n or n_scores != n:
            raise ValueError(
                f"batch size mismatch: {len(cats)} categories, {n} labels, {n_maps} anomaly maps, "
                f"{n_scores} scores"
            )
        unknown = sorted(set(cats) - self._position.keys())
        if unknown:
            raise ValueError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                f"this AnomalyMetrics was built for {self.categories}"
            )
        index = None if index is None else torch.as_tensor(index).reshape(-1)
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(cats):
            groups.setdefault(c, []).append(i)
        for c, rows in groups.items():
            pick = None if len(rows) == n else rows  # the common one-category batch is not copied

            def take(x: Tensor, pick: list[int] | None = pick) -> Tensor:
                return x if pick is None else x[torch.as_tensor(pick, device=x.device)]

            i = self._position[c]
            idx = None if index is None else take(index)
            if scores is not None:
                self.image[i].update(take(scores.reshape(-1)), take(labels), idx)
            if maps is not None:
                self.pixel[i].update(take(maps), take(masks), idx)
            if "spro_split" in batch or str(i) in self.loco:  # MVTec LOCO (data/loco_defects.py)
                keys = [batch.get(k) for k in ("spro_regions", "spro_saturation", "spro_split")]
                self._loco(i, labels.device).update(
                    None if maps is None else take(maps),
                    None if scores is None else take(scores.reshape(-1)),
                    take(labels),
                    *(None if k is None else take(k) for k in keys),
                    idx,
                )

    def _loco(self, i: int, device: torch.device) -> LOCOMetrics:
        if str(i) not in self.loco:
            self.loco[str(i)] = LOCOMetrics(**self._loco_kwargs).to(device)
        return self.loco[str(i)]

    def forward(self, output: Mapping[str, Any], batch: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Calling the collection updates it; there is no per-batch table (torchmetrics' default forward
        would reset the per-category children to compute one)."""
        self.update(output, batch)

    def compute(self) -> pd.DataFrame:
        import pandas as pd
        rows: dict[str, list[float]] = {}
        details: dict[str, dict[str, float]] = {}
        for i, category in enumerate(self.categories):
            # Every rank computes every category (the syncs are collective), even where it saw no data.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warnings.filterwarnings("ignore", message=_BEFORE_UPDATE)
                img = {k: float(v) for k, v in self.image[i].compute().items()}
                pix = {k: float(v) for k, v in self.pixel[i].compute().items()}
            if img["n_samples"] == 0 and pix["n_images"] == 0:
                continue
            for w in caught:  # re-issue with the category, which the single metrics do not know
                warnings.warn(f"[{category}] {w.message}", w.category, stacklevel=3)
            rows[category] = [
                100.0 * v
                for v in (
                    img["auroc"],
                    img["ap"],
                    img["f1max"],
                    pix["auroc"],
                    pix["ap"],
                    pix["f1max"],
                    pix["aupro"],
                )
            ]
            details[category] = {
                "n_images": img["n_samples"],
                "I-F1max threshold": img["f1max_threshold"],
                "P-F1max threshold": pix["f1max_threshold"],
                **{
                    f"{name} bound": 100.0 * pix[f"{key}_bound"]
                    for name, key in (
                        ("P-AUROC", "auroc"),
                        ("P-AP", "ap"),
                        ("P-F1max", "f1max"),
                        ("AUPRO", "aupro"),
                    )
                },
            }
            self._check_streaming(category, img, pix)
        if not rows:
            raise ValueError("AnomalyMetrics received no samples: is the test set empty?")
        table = pd.DataFrame.from_dict(rows, orient="index", columns=list(COLUMNS[:-1]))
        table["mAD"] = table.mean(axis=1, skipna=False)
        loco_details = None
        if len(self.loco):  # MVTec LOCO: sPRO and per-split image AUROC beside the standard columns
            loco, loco_details = loco_table(
                {self.categories[int(k)]: self.loco[k] for k in sorted(self.loco, key=int)}
            )
            table = table.join(loco)
        table.loc["mean"] = table.mean(axis=0, skipna=False)
        table.index.name = "category"
        self.details = pd.DataFrame.from_dict(details, orient="index")
        if loco_details is not None:
            self.details = self.details.join(loco_details)
        self.details.index.name = "category"
        return table

    def _check_streaming(self, category: str, img: dict[str, float], pix: dict[str, float]) -> None:
        if self.pixel_mode != "streaming":
            return
        if pix["n_images"] > img["n_samples"]:
            warnings.warn(
                f"[{category}] streaming pixel metrics counted {int(pix['n_images'] - img['n_samples'])} repeated "
                "sample(s) (a padding DistributedSampler?); histograms cannot drop them. Use a non-padding "
                "sampler or pixel_mode='exact'.",
                stacklevel=4,
            )
        worst = max(pix[k] for k in pix if k.endswith("_bound"))
        if worst > self.bound_warning:
            warnings.warn(
                f"[{category}] streaming pixel metrics may be off by up to {100 * worst:.3f} percentage points "
                "(scores spread over a wide range for the histogram); use more num_bins or pixel_mode='exact'.",
                stacklevel=4,
            )

    def reset(self) -> None:
        super().reset()
        for child in (*self.image, *self.pixel, *self.loco.values()):
            child.reset()
        self.details = None
