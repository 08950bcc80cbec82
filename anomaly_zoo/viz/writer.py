"""What ``anomaly-zoo predict`` writes: ``predictions.csv`` and, per image, an overlay (+ map / mask on request).

Per image, named after its path relative to the common folder of all predicted images (so two folders or
categories with the same file names never collide):

- ``overlays/<name>.png``: the image at its native resolution, the anomaly map upsampled onto it (JET on
  one fixed range per run), the predicted region (map ≥ pixel threshold) outlined in white and the
  ground-truth region in green when the image has a mask;
- ``maps/<name>.npy`` (``save_maps``): the map at native resolution, float32, in the reported unit
  (normalised when the checkpoint normalises);
- ``masks/<name>.png`` (``save_masks``): the predicted region at native resolution, 0/255.

The native image is read from its file; when a path is not a file (in-memory datasets) the batch's
pixels are used, de-normalised, at the batch's size.

Under DDP (N processes) every image is predicted once (unpadded shards), its overlay / map / mask written by
the rank that predicted it (names come from the whole dataset, so they never collide), and rank 0 alone
writes ONE ``predictions.csv`` (every rank's rows gathered, in input order) and prints. The colour range is
the same on every rank: the given one, else the checkpoint's calibrated one, else one chosen from all images
(see ``PredictionWriter``); the only collectives run in ``on_predict_end``, which every rank reaches whatever
its number of batches.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from anomaly_zoo.data.io import read_image
from anomaly_zoo.viz.heatmap import denormalize
from anomaly_zoo.viz.outputs import (
    auto_value_range,
    map_percentiles,
    output_names,
    write_image_outputs,
    write_predictions_csv,
)

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` and per-image overlays (see the module docstring).

    CSV columns: ``path, category, label`` (empty where unknown), ``pred_score`` (normalised when the
    checkpoint says so), ``pred_label`` (1 = anomalous at the stored threshold; empty without thresholds),
    ``raw_score`` (only when normalised), ``overlay``. With per-category thresholds in use, an image of a
    category that has its own is decided (and its predicted region outlined) at that category's threshold.

    Args:
        output_dir: default ``<log dir>/predictions``.
        value_range: scores painted blue→red; default: [0, 1] when normalised, else the calibration range
            of the pixel scores, else (neither known) from every image of the run: the lowest 1st and the
            highest 99.9th percentile of the images' maps — the same on 1 or N processes; the images' outputs
            are then written at the end of the run, from a temporary folder.
        heatmaps: write overlay PNGs (the CSV is always written).
        save_maps: also write the raw map per image (``.npy``).
        save_masks: also write the predicted binary mask per image (``.png``).
    """

    def __init__(self, output_dir: str | None = None, value_range: tuple[float, float] | None = None,
                 heatmaps: bool = True, save_maps: bool = False, save_masks: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir else None
        self.value_range = value_range
        self._given_range = value_range
        self.heatmaps = heatmaps
        self.save_maps = save_maps
        self.save_masks = save_masks
        self._rows: list[dict[str, Any]] = []
        self._order: list[tuple[int, int]] = []  # (loader, dataset index) per row: the merged CSV's order
        self._pending: list[tuple[str, str, Path]] = []  # images whose outputs wait for the colour range
        self._names: dict[str, str] = {}
        self._thresholds: Any = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.output_dir is None:
            self.output_dir = Path(trainer.log_dir or "results") / "predictions"
        self._rows, self._order, self._pending = [], [], []
        self.value_range = self._given_range  # a Trainer reused for another predict run starts afresh
        self._thresholds = getattr(pl_module, "thresholds", None)
        self._coverage = float(getattr(pl_module, "map_coverage", 1.0))
        preprocessing = getattr(pl_module, "preprocessing", None) or {}
        self._mean, self._std = preprocessing.get("mean"), preprocessing.get("std")
        if self._mean is None:
            from anomaly_zoo.models.components.preprocessing import preprocessing_of

            found = preprocessing_of(trainer.datamodule)
            self._mean, self._std = found.get("mean"), found.get("std")
        if self.value_range is None and self._thresholds is not None:
            self.value_range = (0.0, 1.0) if self._thresholds.normalize else tuple(self._thresholds.pixel_range)
        # Decided from what every rank knows alike (never from its data): all ranks agree on the collectives.
        self._deferred = self.value_range is None and self.heatmaps
        self._range_seen = [math.inf, -math.inf]
        self._pending_dir = self.output_dir / f".pending_rank{trainer.global_rank}"
        self._names = output_names(_dataset_paths(trainer))

    def _name(self, path: str, category: str, index: int) -> str:
        if path not in self._names:  # a loader without a listed dataset: still unique by index
            self._names[path] = f"{category}/{index:06d}_{Path(path).stem}"
        return self._names[path]

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        maps = prediction["anomaly_map"][:, 0].detach().float().cpu().numpy()
        labels = prediction["label"].reshape(-1).tolist()
        decisions = prediction.get("pred_label")
        index = batch.get("index") if isinstance(batch, dict) else None
        for i, path in enumerate(prediction["path"]):
            if index is not None and int(index[i]) < 0:
                continue  # the filler of an empty DDP shard (data/sampler.py): not an image the user gave
            category = prediction["category"][i]
            name = self._name(str(path), category, int(index[i]) if index is not None else len(self._rows))
            row: dict[str, Any] = {
                "path": path,
                "category": category,
                "label": labels[i] if labels[i] >= 0 else "",
                "pred_score": float(prediction["pred_score"][i]),
                "pred_label": int(decisions[i]) if decisions is not None else "",
            }
            if "raw_score" in prediction:
                row["raw_score"] = float(prediction["raw_score"][i])
            if self._deferred:
                self._defer_images(name, str(path), maps[i], prediction, batch, i)
            elif self.heatmaps or self.save_maps or self.save_masks:
                self._write_images(name, str(path), maps[i], prediction, batch, i)
            row["overlay"] = f"overlays/{name}.png" if self.heatmaps else ""
            self._rows.append(row)
            self._order.append((dataloader_idx, int(index[i]) if index is not None else -1))

    def _defer_images(self, name: str, path: str, anomaly_map: np.ndarray, prediction: dict, batch: dict,
                      i: int) -> None:
        """Keep image ``i``'s inputs of ``_write_images`` until the run's colour range is known."""
        low, high = map_percentiles(anomaly_map)
        self._range_seen = [min(self._range_seen[0], low), max(self._range_seen[1], high)]
        keep_pixels = not os.path.isfile(path)  # a file is read again; in-memory pixels must be kept
        sample = {"prediction": _one_sample(prediction, i),
                  "batch": _one_sample({k: v for k, v in batch.items() if k != "image" or keep_pixels}, i)}
        self._pending_dir.mkdir(parents=True, exist_ok=True)
        target = self._pending_dir / f"{len(self._pending):06d}.pt"
        torch.save({"map": torch.from_numpy(anomaly_map.copy()), **sample}, target)
        self._pending.append((name, path, target))

    def _write_pending(self, trainer: pl.Trainer, distributed: bool) -> None:
        """One colour range over every rank's images (a MIN / MAX all-reduce), then the deferred outputs."""
        seen = torch.tensor([-self._range_seen[0], self._range_seen[1]], dtype=torch.float64,
                            device=trainer.strategy.root_device)
        if distributed:
            dist.all_reduce(seen, op=dist.ReduceOp.MAX)
        self.value_range = auto_value_range([(-float(seen[0]), float(seen[1]))])
        for name, path, target in self._pending:
            sample = torch.load(target, weights_only=True)
            self._write_images(name, path, sample["map"].numpy(), sample["prediction"], sample["batch"], 0)
        self._pending = []
        shutil.rmtree(self._pending_dir, ignore_errors=True)

    def _merged_rows(self, trainer: pl.Trainer, distributed: bool) -> list[dict[str, Any]] | None:
        """Every rank's rows on rank 0, in input order (loader, then dataset index); None on other ranks."""
        parts = [(self._order, self._rows)]
        if distributed:
            gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
            dist.gather_object(parts[0], gathered, dst=0)
            if not trainer.is_global_zero:
                return None
            parts = gathered
        keyed = [(key, rank, n, row) for rank, (order, rows) in enumerate(parts)
                 for n, (key, row) in enumerate(zip(order, rows))]
        return [row for *_, row in sorted(keyed, key=lambda item: item[:3])]

    def _write_images(self, name: str, path: str, anomaly_map: np.ndarray, prediction: dict, batch: dict,
                      i: int) -> None:
        if os.path.isfile(path):
            image = read_image(path)
        else:  # not a file (an in-memory dataset): the batch's pixels, at the batch's size
            image = denormalize(batch["image"][i].detach().float().cpu().numpy(), self._mean, self._std)
        height, width = image.shape[:2]
        pixel_threshold = None
        if self._thresholds is not None:  # the image's category's pixel threshold when in use, else the global one
            category = prediction["category"][i] if "category" in prediction else None
            pixel_threshold = self._thresholds.for_category(category).pixel_decision
        mask = prediction["mask"][i, 0].detach().cpu().numpy().astype(np.uint8)
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool) if mask.any() else None
        write_image_outputs(self.output_dir, name, image, anomaly_map, self._coverage, self.value_range,
                            pixel_threshold, mask, self.heatmaps, self.save_maps, self.save_masks)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank reaches this hook whatever its number of batches (even only a DDP filler): the only
        # place with collectives. A collective in a batch hook hangs when ranks have different batch counts.
        distributed = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
        if self._deferred:
            self._write_pending(trainer, distributed)
        rows = self._merged_rows(trainer, distributed)
        if not rows:  # another rank's process, or no image at all
            return
        target = write_predictions_csv(self.output_dir, rows)
        if self.save_masks and self._thresholds is None:
            print("No stored thresholds in this checkpoint: no binary masks written (fit calibrates them).")
        print(f"Predictions written to {target}" + (" (+ overlays/)" if self.heatmaps else ""))


def _one_sample(values: dict[str, Any], i: int) -> dict[str, Any]:
    """Sample ``i`` of a batch-like dict as a batch of one (tensors on CPU; lists sliced; the rest as is)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.ndim:
            out[key] = value[i : i + 1].detach().cpu()
        elif isinstance(value, (list, tuple)):
            out[key] = list(value[i : i + 1])
        else:
            out[key] = value
    return out


def _dataset_paths(trainer: pl.Trainer) -> list[str]:
    loaders = trainer.predict_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    paths: list[str] = []
    for loader in loaders:
        samples = getattr(getattr(loader, "dataset", None), "samples", None)
        if samples:
            paths += [getattr(s, "image_path", None) or str(s) for s in samples]
    return paths
