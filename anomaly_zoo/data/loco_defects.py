"""MVTec LOCO AD defects for sPRO: ``defects_config.json`` and the per-defect batch keys.

Each PNG in ``ground_truth/<type>/<image>/`` is one defect (official evaluation v2.0, ``src/image.py``):
its single non-zero pixel value names the defect type in the category's ``defects_config.json``::

    [{"defect_name": "missing_almonds", "pixel_value": 255, "saturation_threshold": 1.0,
      "relative_saturation": true}, …]

The saturation area of a defect of ``area`` pixels is ``int(threshold * area)`` (relative) or
``min(threshold, area)`` (absolute), at the resolution of the mask files. Metrics run at the resized
mask resolution, so it is scaled by ``resized area / original area`` (unchanged at native size); a
defect that vanishes when the mask is shrunk is dropped, as PRO drops vanished regions. A saturation
area of 0 (a relative threshold times an area below one pixel) becomes 1 pixel: saturated by its first
pixel, where the official curve has a NaN point.

Extra batch keys of the test split (read by :class:`~anomaly_zoo.metrics.spro.SPRO`):

* ``spro_regions`` int64 (1, H, W): bit ``k`` set where the image's ``k``-th defect (sorted file name)
  covers the pixel; its non-zero pixels are exactly ``mask``;
* ``spro_saturation`` float64 (62,): saturation area of defect ``k`` at the mask's resolution, 0 unused;
* ``spro_split`` int64: 0 = good, 1 = structural, 2 = logical (:data:`~anomaly_zoo.metrics.spro.LOCO_SPLITS`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomaly_zoo.data.dataset import AnomalyDataset
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.metrics.spro import LOCO_SPLITS, MAX_DEFECTS, pack_defect_regions

__all__ = [
    "SPRO_KEYS",
    "DefectSpec",
    "LOCODefectsDataset",
    "load_defects_config",
    "pack_spro_item",
    "saturation_area",
    "unpack_spro_items",
]

CONFIG_NAME = "defects_config.json"
#: The batch keys this module adds (see the module docstring).
SPRO_KEYS = ("spro_regions", "spro_saturation", "spro_split")
_KEYS = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")


@dataclass(frozen=True)
class DefectSpec:
    """One entry of ``defects_config.json``."""

    name: str
    pixel_value: int
    saturation_threshold: float
    relative: bool


def load_defects_config(path: Path) -> dict[int, DefectSpec]:
    """``{pixel_value: DefectSpec}`` from a category's ``defects_config.json``, validated like the official code."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"Cannot read the MVTec LOCO defects config '{path}': {err}") from err
    if not isinstance(entries, list):
        raise DatasetError(f"'{path}' must hold a JSON list of defect entries with keys {list(_KEYS)}.")
    specs: dict[int, DefectSpec] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(k not in entry for k in _KEYS):
            raise DatasetError(f"'{path}' entry {i} must have the keys {list(_KEYS)}, got {entry!r}.")
        value, threshold, relative = (
            entry["pixel_value"],
            entry["saturation_threshold"],
            entry["relative_saturation"],
        )
        valid = isinstance(value, int) and 1 <= value <= 255 and isinstance(relative, bool)
        if relative:
            valid = valid and isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0
        else:
            valid = valid and isinstance(threshold, int) and threshold >= 0
        if not valid:
            raise DatasetError(
                f"'{path}' entry {i} ({entry.get('defect_name')!r}) is invalid: pixel_value must be 1..255, a "
                "relative saturation_threshold in (0, 1], an absolute one a pixel count."
            )
        specs[value] = DefectSpec(str(entry["defect_name"]), value, float(threshold), relative)
    return specs


def saturation_area(spec: DefectSpec, area: int) -> int:
    """The official saturation area (``GroundTruthChannel.get_saturation_area``), at least 1 pixel."""
    if spec.relative:
        sat = int(spec.saturation_threshold * area)
    else:
        sat = min(int(spec.saturation_threshold), area)
    return max(sat, 1)


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask resize of ``transforms.resize_pair`` (PIL nearest), so the defects union equals ``mask``."""
    if mask.shape == size:
        return mask
    h, w = size
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0


class LOCODefectsDataset(AnomalyDataset):
    """An :class:`AnomalyDataset` of MVTec LOCO samples whose items also carry the sPRO keys (see module)."""

    def __init__(self, base: AnomalyDataset, configs: dict[str, dict[int, DefectSpec]]) -> None:
        super().__init__(base.samples, base.transform, base.image_size, base.interpolation, base.split)
        self.configs = configs

    @classmethod
    def wrap(cls, dataset: AnomalyDataset | None, root: Path) -> AnomalyDataset | None:
        """The dataset with sPRO keys when every category ships ``defects_config.json``; else unchanged
        (with a warning that sPRO will not be reported)."""
        if dataset is None or not any(s.mask_paths for s in dataset.samples):
            return dataset
        configs, missing = {}, []
        for category in dataset.categories:
            path = Path(root) / category / CONFIG_NAME
            if path.is_file():
                configs[category] = load_defects_config(path)
            else:
                missing.append(str(path))
        if missing:
            warnings.warn(
                f"MVTec LOCO defects config not found ({', '.join(missing)}): sPRO is not reported "
                "(the file ships in each category folder of the official archive).",
                stacklevel=2,
            )
            return dataset
        return cls(dataset, configs)

    def _defects(self, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        specs = self.configs[sample.category]
        if len(sample.mask_paths) > MAX_DEFECTS:
            raise DatasetError(f"'{sample.image_path}' has more than {MAX_DEFECTS} defect masks.")
        masks = np.zeros((len(sample.mask_paths), *size), dtype=bool)
        saturation = np.zeros(MAX_DEFECTS, dtype=np.float64)
        for k, path in enumerate(sample.mask_paths):
            raw = np.asarray(Image.open(path))
            if raw.ndim == 3:
                raw = raw[..., 0]
            values = np.unique(raw[raw > 0]).tolist()
            if len(values) != 1 or values[0] not in specs:
                known = ", ".join(f"{v} ({s.name})" for v, s in sorted(specs.items()))
                raise DatasetError(
                    f"Mask '{path}' must hold one defect's pixel value from "
                    f"{sample.category}/{CONFIG_NAME} ({known}); found values {values[:5]}."
                )
            native = raw > 0
            masks[k] = _resize_nearest(native, size)
            area = int(native.sum())
            sat = saturation_area(specs[values[0]], area)
            # Scale to the evaluated resolution; exact (no rounding) at native size.
            resized = int(masks[k].sum())
            saturation[k] = sat if resized == area else sat * resized / area
        return masks, saturation

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        sample = self.samples[index]
        size = tuple(item["mask"].shape[-2:])
        if sample.mask_paths:
            masks, saturation = self._defects(index, size)
            regions = pack_defect_regions(masks)
        else:
            regions, saturation = torch.zeros(size, dtype=torch.int64), np.zeros(MAX_DEFECTS)
        codes = {name: i for i, name in enumerate(LOCO_SPLITS, start=1)}
        if sample.label and sample.defect_type not in codes:
            raise DatasetError(
                f"MVTec LOCO test folder '{sample.defect_type}' is not one of {list(LOCO_SPLITS)} "
                f"('{sample.image_path}')."
            )
        item["spro_regions"] = regions.reshape(1, *size)
        item["spro_saturation"] = torch.as_tensor(saturation, dtype=torch.float64)
        item["spro_split"] = torch.tensor(codes.get(sample.defect_type, 0) if sample.label else 0)
        return item


def pack_spro_item(batch: dict, i: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray, int] | None:
    """Image ``i``'s sPRO keys in a compact form to keep until epoch end (set-level protocols keep masks
    the same way): one packed bit plane per defect, the used saturation slots and the split code.
    ``None`` when the batch carries no sPRO keys."""
    if any(k not in batch for k in SPRO_KEYS):
        return None
    regions = (
        torch.as_tensor(batch["spro_regions"][i]).reshape(-1, *batch["spro_regions"].shape[-2:])[0].cpu()
    )
    n = int(regions.max()).bit_length() if regions.numel() else 0
    planes = (
        np.stack([((regions >> k) & 1).numpy().astype(bool) for k in range(n)]) if n else np.zeros((0,), bool)
    )
    saturation = torch.as_tensor(batch["spro_saturation"][i]).reshape(-1)[:n].double().cpu().numpy()
    return (
        np.packbits(planes, axis=None),
        tuple(regions.shape),
        saturation,
        int(batch["spro_split"].reshape(-1)[i]),
    )


def unpack_spro_items(
    items: list[tuple[np.ndarray, tuple[int, int], np.ndarray, int]],
) -> dict[str, torch.Tensor]:
    """The batch keys of several :func:`pack_spro_item` results (all of one mask size)."""
    regions, saturation, split = [], [], []
    for packed, (h, w), sat, code in items:
        n = sat.shape[0]
        planes = np.unpackbits(packed, count=n * h * w).reshape(n, h, w) if n else np.zeros((0, h, w), bool)
        regions.append(pack_defect_regions(planes.astype(bool)).reshape(1, h, w))
        full = np.zeros(MAX_DEFECTS, dtype=np.float64)
        full[:n] = sat
        saturation.append(torch.from_numpy(full))
        split.append(code)
    return {
        "spro_regions": torch.stack(regions),
        "spro_saturation": torch.stack(saturation),
        "spro_split": torch.tensor(split),
    }
