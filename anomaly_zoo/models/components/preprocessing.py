"""The input format a model was fitted on, recorded in its checkpoint (predict and export reproduce it)."""

from __future__ import annotations

from typing import Any

from anomaly_zoo.data.transforms import NORMALIZATIONS, as_hw

__all__ = ["describe_preprocessing", "preprocessing_of"]


def preprocessing_of(datamodule: Any) -> dict[str, Any]:
    """``{"image_size": [h, w] | None, "normalization", "mean", "std", "interpolation"}`` of a DataModule; {} if unknown."""
    if datamodule is None or not hasattr(datamodule, "normalization"):
        return {}
    normalization = datamodule.normalization
    if isinstance(normalization, str):
        mean, std = NORMALIZATIONS.get(normalization, (None, None))
    else:
        (mean, std), normalization = normalization, "custom"
    size = as_hw(getattr(datamodule, "image_size", None))
    return {
        "image_size": list(size) if size else None,
        "normalization": normalization,
        "mean": [float(v) for v in mean] if mean is not None else None,
        "std": [float(v) for v in std] if std is not None else None,
        "interpolation": getattr(datamodule, "interpolation", "bilinear"),
    }


def describe_preprocessing(preprocessing: dict[str, Any] | None) -> str:
    """One line for people: what an input must look like before it enters the model."""
    if not preprocessing:
        return "preprocessing unknown (checkpoint written before it was recorded)"
    size = preprocessing.get("image_size")
    size_text = f"{size[0]}×{size[1]} ({preprocessing.get('interpolation')} resize)" if size else "native size"
    return (
        f"RGB, {size_text}, float32 NCHW, pixel/255 then (x - mean) / std with mean {preprocessing.get('mean')} "
        f"and std {preprocessing.get('std')} ({preprocessing.get('normalization')})"
    )
