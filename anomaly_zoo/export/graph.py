"""The module that gets exported: images in, (anomaly_map, pred_score) out, in the unit ``predict`` reports."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly_zoo.models.components.preprocessing import describe_preprocessing

__all__ = ["InferenceGraph", "export_metadata"]


class InferenceGraph(nn.Module):
    """``forward(images (N,3,H,W) float32, preprocessed) -> (anomaly_map (N,1,H',W'), pred_score (N,))``.

    Wraps an :class:`~anomaly_zoo.models.base.AnomalyModule`'s ``export_anomaly`` (``predict_anomaly`` unless
    the model gives a static-graph equivalent; any model, present or future); when the checkpoint's thresholds say ``normalize``, the [0, 1] mapping (0.5 = threshold) is
    applied inside the graph, so an exported model reports exactly what ``predict`` reports — with global
    thresholds; per-category ones are metadata (``export_metadata``), since the graph does not know the category.
    """

    def __init__(self, model: nn.Module, normalize: bool | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        thresholds = getattr(model, "thresholds", None)
        self.normalize = bool(thresholds is not None and thresholds.normalize) if normalize is None else normalize
        if self.normalize and thresholds is None:
            raise ValueError("normalize=True needs calibrated thresholds in the checkpoint (fit stores them).")
        self.thresholds = thresholds
        #: True while tracing: the model's ``export_anomaly``; False: ``predict_anomaly`` (the parity reference).
        self.exporting = False

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        infer = self.model.export_anomaly if self.exporting else self.model.predict_anomaly
        output = infer(images)
        anomaly_map, pred_score = output["anomaly_map"].float(), output["pred_score"].float()
        if self.normalize:
            anomaly_map = self.thresholds.normalized_map(anomaly_map)
            pred_score = self.thresholds.normalized_image(pred_score)
        return anomaly_map, pred_score


def export_metadata(model: nn.Module, graph: InferenceGraph, input_shape: tuple[int, ...],
                    dynamic_batch: bool = True) -> dict[str, Any]:
    """What a runtime needs beside the graph: input format, outputs, thresholds in the outputs' unit."""
    thresholds = getattr(model, "thresholds", None)
    preprocessing = getattr(model, "preprocessing", None)
    decision = None
    if thresholds is not None:
        decision = {"image": 0.5 if graph.normalize else thresholds.image,
                    "pixel": 0.5 if graph.normalize else thresholds.pixel,
                    "rule": "anomalous when pred_score >= image; defect pixel when anomaly_map >= pixel",
                    "mode": thresholds.mode}
        if thresholds.per_category:
            decision["per_category"] = _category_decisions(thresholds, graph.normalize)
            decision["rule"] += ("; in per-category mode an image of a listed category uses that category's "
                                 "image / pixel instead")
    return {
        "producer": "anomaly-zoo",
        "model": getattr(type(model), "registry_name", type(model).__name__),
        "input": {"name": "images", "shape": ["N" if dynamic_batch else input_shape[0], *input_shape[1:]], "dtype": "float32",
                  "preprocessing": preprocessing, "description": describe_preprocessing(preprocessing)},
        "outputs": {"anomaly_map": "float32 (N, 1, H, W), higher = more anomalous",
                    "pred_score": "float32 (N,), the image score"},
        "normalized": graph.normalize,
        "map_coverage": float(getattr(model, "map_coverage", 1.0)),  # < 1: the map covers a centre crop
        "thresholds": decision,
        "calibration": thresholds.to_dict() if thresholds is not None else None,
    }


def _category_decisions(thresholds: Any, normalized: bool) -> dict[str, dict[str, Any]]:
    """Each category's thresholds in the graph's output unit, with the raw ones.

    The graph cannot know an image's category, so a normalised graph maps scores with the global threshold
    ``t`` and range. A category's raw threshold ``t_c`` is listed mapped the same way; ``normalised score >=
    mapped t_c`` is the raw decision ``score >= t_c`` only while the mapped value lies strictly inside (0, 1)
    (the clip makes every score beyond ``t ± (max - min) / 2`` equal): ``exact`` says whether it does. For a
    category far from the global scale the normalised graph cannot decide; its raw scores can (``raw_*``).
    """
    out = {}
    for name, own in thresholds.per_category.items():
        entry: dict[str, Any] = {"image": own.image, "pixel": own.pixel, "n_images": own.n_images}
        if normalized:
            image = float(thresholds.normalized_image(np.array([own.image]))[0])
            pixel = float(thresholds.normalized_map(np.array([own.pixel]))[0])
            entry = {**entry, "image": image, "pixel": pixel, "raw_image": own.image, "raw_pixel": own.pixel,
                     "exact": bool(0.0 < image < 1.0 and 0.0 < pixel < 1.0)}
        out[name] = entry
    return out


def metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, indent=2, sort_keys=True)
