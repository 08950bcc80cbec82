"""The files ``predict`` writes, for a checkpoint (:mod:`.writer`) and for an exported model
(:mod:`anomaly_zoo.export.predict`) alike: names, native-size maps, overlays, ``.npy`` maps, masks, the CSV.

numpy, OpenCV and PIL only (no torch): the exported-model ``predict`` runs without it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from anomaly_zoo.viz.heatmap import overlay_heatmap

__all__ = ["PREDICTIONS_CSV", "auto_value_range", "globally_decided_note", "map_percentiles", "native_map",
           "output_names", "write_image_outputs", "write_predictions_csv"]

PREDICTIONS_CSV = "predictions.csv"


def output_names(paths: Sequence[str]) -> dict[str, str]:
    """Collision-free output names (no extension, ``/``-separated) for image paths.

    Each name is the path relative to the deepest folder all paths share, without its extension; where two
    paths would give the same name (``a.png`` and ``a.jpg``) the extension is kept in it (``a_jpg``).
    """
    unique = list(dict.fromkeys(str(p) for p in paths))
    if not unique:
        return {}
    parents = [os.path.dirname(os.path.abspath(p)) for p in unique]
    root = os.path.commonpath(parents) if len(set(parents)) > 1 else parents[0]
    relative = [PurePath(os.path.relpath(os.path.abspath(p), root)).as_posix() for p in unique]
    stems = [str(PurePath(r).with_suffix("")) if PurePath(r).suffix else r for r in relative]
    taken: dict[str, int] = {}
    for stem in stems:
        taken[stem] = taken.get(stem, 0) + 1
    names = {}
    for path, rel, stem in zip(unique, relative, stems):
        name = stem if taken[stem] == 1 else rel.replace(".", "_")
        names[path] = name.lstrip("./") or "image"
    return names


def native_map(anomaly_map: np.ndarray, height: int, width: int, coverage: float = 1.0) -> np.ndarray:
    """The map at the native size; a map of a centre crop (``coverage`` < 1) goes into the crop's place and the
    border (never scored) gets the map's minimum."""
    if coverage >= 1.0:
        return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)
    crop_h, crop_w = max(1, round(height * coverage)), max(1, round(width * coverage))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    native = np.full((height, width), float(anomaly_map.min()), dtype=np.float32)
    native[top:top + crop_h, left:left + crop_w] = cv2.resize(anomaly_map, (crop_w, crop_h), interpolation=cv2.INTER_LINEAR)
    return native


def map_percentiles(anomaly_map: np.ndarray) -> tuple[float, float]:
    """The 1st and 99.9th percentiles of one map (the automatic colour range is their extremes over a run)."""
    low, high = np.percentile(anomaly_map, [1, 99.9])
    return float(low), float(high)


def auto_value_range(percentiles: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The lowest 1st and highest 99.9th percentile over the run's maps; (0, 1) when there were none."""
    lows, highs = zip(*percentiles) if percentiles else ((), ())
    low, high = min(lows, default=math.inf), max(highs, default=-math.inf)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (0.0, 1.0)


def write_image_outputs(output_dir: Path, name: str, image: np.ndarray, anomaly_map: np.ndarray, coverage: float,
                        value_range: tuple[float, float] | None, pixel_threshold: float | None,
                        mask: np.ndarray | None, heatmaps: bool, save_maps: bool, save_masks: bool) -> None:
    """One image's files: ``overlays/<name>.png`` (``heatmaps``), ``maps/<name>.npy`` and ``masks/<name>.png``.

    ``image`` (H, W, 3) uint8 is at the image's native size; ``anomaly_map`` (h, w) is brought to it by
    :func:`native_map` (``coverage`` as there). The predicted region is ``map >= pixel_threshold`` (None without
    thresholds: no outline, no mask file); ``mask`` is the ground truth at the native size (None when unknown).
    """
    native = native_map(anomaly_map, image.shape[0], image.shape[1], coverage)
    predicted = native >= pixel_threshold if pixel_threshold is not None else None
    if heatmaps:
        assert value_range is not None
        _save_png(output_dir / "overlays" / f"{name}.png",
                  overlay_heatmap(image, native, value_range, mask=mask, predicted=predicted))
    if save_maps:
        target = output_dir / "maps" / f"{name}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, native.astype(np.float32))
    if save_masks and predicted is not None:
        _save_png(output_dir / "masks" / f"{name}.png", predicted.astype(np.uint8) * 255)


def _save_png(target: Path, picture: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(target)


def write_predictions_csv(output_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """``predictions.csv`` with one row per image; the columns are the union of the rows' keys, in order."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / PREDICTIONS_CSV
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return target


def globally_decided_note(categories: Sequence[str], calibrated: Sequence[str], option: str) -> str:
    """What ``predict`` says when a per-category model decided images of ``categories`` (none of which has its own
    thresholds) at the global ones: a unified model's categories differ in scale, so that may flag all or none."""
    return (f"Note: this model decides each category at its own thresholds, but category "
            f"{', '.join(repr(c) for c in categories)} has none, so those images were decided at the global "
            f"thresholds. Name their category with {option} NAME (one of {', '.join(calibrated)}) to use its own.")
