"""Batching samples, with a clear error when native-size images of different sizes meet in one batch."""

from __future__ import annotations

from typing import Any

from torch.utils.data import default_collate

from anomaly_zoo.data.errors import DatasetError


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` for Batch-contract dicts; mixed image sizes name the files and the fix."""
    sizes = {tuple(s["image"].shape[-2:]) for s in samples}
    if len(sizes) > 1:
        examples = ", ".join(f"'{s['path']}' {s['image'].shape[-2]}x{s['image'].shape[-1]}" for s in samples[:3])
        raise DatasetError(
            f"Images of different sizes {sorted(sizes)} in one batch ({examples}, ...): set `image_size` "
            "to resize them all, or use batch size 1 (`batch_size` / `eval_batch_size`) to keep native sizes."
        )
    return default_collate(samples)
