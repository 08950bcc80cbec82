"""What ``anomaly-zoo predict`` writes: a scores CSV and heat-map overlays per image."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from anomaly_zoo.data.io import read_image
from anomaly_zoo.viz.heatmap import overlay_heatmap


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (path, category, label, pred_score) and ``heatmaps/<category>/<stem>.png``.

    Args:
        output_dir: default ``<log dir>/predictions``.
        value_range: scores painted blue→red; default: the 1st and 99.9th percentiles of the first batch's maps.
        heatmaps: write overlay PNGs (the CSV is always written).
    """

    def __init__(self, output_dir: str | None = None, value_range: tuple[float, float] | None = None,
                 heatmaps: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir else None
        self.value_range = value_range
        self.heatmaps = heatmaps
        self._rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.output_dir is None:
            self.output_dir = Path(trainer.log_dir or "results") / "predictions"
        self._rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        maps = prediction["anomaly_map"][:, 0].detach().float().cpu().numpy()
        if self.value_range is None:
            self.value_range = (float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9)))
        for i, path in enumerate(prediction["path"]):
            category = prediction["category"][i]
            score = float(prediction["pred_score"][i])
            self._rows.append({"path": path, "category": category, "label": int(prediction["label"][i]),
                               "pred_score": score})
            if self.heatmaps:
                image = np.asarray(Image.fromarray(read_image(path)).resize(maps[i].shape[::-1], Image.BILINEAR))
                mask = prediction["mask"][i, 0].cpu().numpy().astype(bool)
                target = self.output_dir / "heatmaps" / category / f"{Path(path).parent.name}_{Path(path).stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(overlay_heatmap(image, maps[i], self.value_range, mask=mask)).save(target)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._rows:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        with open(self.output_dir / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self._rows[0]))
            writer.writeheader()
            writer.writerows(self._rows)
        print(f"Predictions written to {self.output_dir / name}" + (" (+ heatmaps/)" if self.heatmaps else ""))
