"""Run a file written by ``anomaly-zoo export`` from the file and its ``<file>.json`` metadata alone.

ONNX files run by onnxruntime with numpy: no torch, no Lightning, so a single-image ``predict`` starts in
well under a second (a checkpoint needs torch + Lightning + timm first, ~5 s on a small CPU). TorchScript
files run by ``torch.jit`` (torch, still no Lightning). The input is prepared as the model's DataModule
does (PIL resize with the recorded interpolation, ``/255``, ``(x - mean) / std``), so the scores equal
``predict --ckpt_path model.ckpt``'s; ``tests/test_predict_exported.py`` checks it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_zoo.data.resize import resize_image

__all__ = ["EXPORTED_SUFFIXES", "ExportedModel", "ExportedModelError", "is_exported_model", "not_a_checkpoint"]

#: What ``anomaly-zoo export`` writes (beside ``<file>.json``).
EXPORTED_SUFFIXES = (".onnx", ".pt")


class ExportedModelError(ValueError):
    """An exported model file (or its metadata) is missing, unreadable, or cannot decide as asked."""


def is_exported_model(path: str | os.PathLike) -> bool:
    """True for an ``.onnx`` / ``.pt`` file that ``anomaly-zoo export`` wrote (its ``.json`` metadata says so)."""
    path = Path(path)
    if path.suffix not in EXPORTED_SUFFIXES:
        return False
    try:
        return json.loads(Path(f"{path}.json").read_text()).get("producer") == "anomaly-zoo"
    except (OSError, ValueError):
        return path.suffix == ".onnx"  # an .onnx without metadata: ExportedModel.load says what is missing


def not_a_checkpoint(path: str | os.PathLike, option: str = "--ckpt_path") -> str | None:
    """The error for an exported model given where a Lightning checkpoint is needed (``test``, ``export``, ...);
    None when ``path`` is not one."""
    if not is_exported_model(path):
        return None
    return (f"'{path}' is a model written by `anomaly-zoo export`: only `predict` runs it (anomaly-zoo predict "
            f"--ckpt_path {path} IMAGES); `{option}` here needs the Lightning checkpoint (.ckpt) it came from.")


@dataclass
class ExportedModel:
    """An exported inference graph: ``images (N, 3, H, W) float32 → (maps (N, H', W'), scores (N,))``."""

    path: Path
    metadata: dict[str, Any]
    _run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExportedModel:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ExportedModelError(f"exported model '{path}' does not exist (check --ckpt_path).")
        meta_path = Path(f"{path}.json")
        try:
            metadata = json.loads(meta_path.read_text())
        except OSError:
            raise ExportedModelError(f"'{meta_path}' is missing: `anomaly-zoo export` writes the input format and "
                                     "thresholds there, beside the model file; keep them together.") from None
        except ValueError as err:
            raise ExportedModelError(f"'{meta_path}' is not valid JSON ({err}).") from None
        if metadata.get("producer") != "anomaly-zoo" or "input" not in metadata:
            raise ExportedModelError(f"'{meta_path}' was not written by `anomaly-zoo export`.")
        return cls(path, metadata, _onnx_runner(path) if path.suffix == ".onnx" else _torchscript_runner(path))

    @property
    def model_name(self) -> str:
        return str(self.metadata.get("model", "model"))

    @property
    def input_size(self) -> tuple[int, int]:
        shape = self.metadata["input"]["shape"]
        return int(shape[2]), int(shape[3])

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was exported at, or None for a dynamic batch axis."""
        first = self.metadata["input"]["shape"][0]
        return None if first == "N" else int(first)

    @property
    def normalized(self) -> bool:
        return bool(self.metadata.get("normalized"))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB → (3, h, w) float32, as the model's DataModule prepared its inputs."""
        spec = self.metadata["input"].get("preprocessing") or {}
        size = self.input_size
        if image.shape[:2] != size:
            image = resize_image(image, size, spec.get("interpolation") or "bilinear")
        mean = np.asarray(spec.get("mean") or (0.0, 0.0, 0.0), dtype=np.float32)
        std = np.asarray(spec.get("std") or (1.0, 1.0, 1.0), dtype=np.float32)
        pixels = image.astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Maps (N, h, w) at the input size and scores (N,); a fixed-batch graph gets padded batches."""
        n = images.shape[0]
        fixed = self.fixed_batch
        if fixed is None:
            maps, scores = self._run(images)
        else:
            maps_list, scores_list = [], []
            for start in range(0, n, fixed):
                chunk = images[start:start + fixed]
                padded = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
                m, s = self._run(padded)
                maps_list.append(m[:len(chunk)])
                scores_list.append(s.reshape(-1)[:len(chunk)])
            maps, scores = np.concatenate(maps_list), np.concatenate(scores_list)
        maps = np.asarray(maps, dtype=np.float32)[:, 0]
        size = self.input_size
        if maps.shape[-2:] != size:  # the shared loop's resize to the mask size (bilinear, align_corners=False)
            import cv2

            maps = np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in maps])
        return maps, np.asarray(scores, dtype=np.float32).reshape(-1)

    def categories_with_own_thresholds(self) -> list[str]:
        """The categories that decide at their own thresholds (empty unless the fit used per-category ones)."""
        thresholds = self.metadata.get("thresholds") or {}
        return list(thresholds.get("per_category") or {}) if thresholds.get("mode") == "per-category" else []

    def decision_thresholds(self, category: str | None) -> tuple[float, float] | None:
        """(image, pixel) thresholds in the outputs' unit for an image of ``category``; None without thresholds.

        A category with its own thresholds decides by them when the checkpoint used per-category thresholds;
        a normalised graph (mapped with the global ones) can do so exactly only where ``exact`` says so.
        """
        thresholds = self.metadata.get("thresholds")
        if not thresholds:
            return None
        own = thresholds["per_category"][category] if category in self.categories_with_own_thresholds() else None
        if own is None:
            return float(thresholds["image"]), float(thresholds["pixel"])
        if self.normalized and not own.get("exact", True):
            raise ExportedModelError(
                f"category '{category}' has its own thresholds, but this graph normalises scores with the global "
                "ones and cannot reproduce its decisions (its thresholds fall outside the normalised range): "
                "predict with the checkpoint, or export without --threshold.normalize.")
        return float(own["image"]), float(own["pixel"])

    def value_range(self) -> tuple[float, float] | None:
        """The overlay colour range ``predict`` uses with the checkpoint: [0, 1] when normalised, else the
        calibration range of the pixel scores; None when neither is known (chosen from the run's maps)."""
        if self.normalized:
            return (0.0, 1.0)
        calibration = self.metadata.get("calibration")
        return tuple(float(v) for v in calibration["pixel_range"]) if calibration else None


def _onnx_runner(path: Path) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportedModelError("running an .onnx model needs onnxruntime: pip install 'anomaly-zoo[export]' "
                                 "(or pip install onnxruntime).") from None
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportedModelError(f"onnxruntime cannot load '{path}': {str(err).splitlines()[0]}") from None

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, pred_score = session.run(["anomaly_map", "pred_score"], {"images": images})
        return anomaly_map, pred_score

    return run


def _torchscript_runner(path: Path) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch.jit raises RuntimeError or its own types
            raise ExportedModelError(f"torch.jit cannot load '{path}': {str(err).splitlines()[0]}") from None

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            anomaly_map, pred_score = module(torch.from_numpy(images))
        return anomaly_map.numpy(), pred_score.numpy()

    return run
