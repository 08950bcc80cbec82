"""Set-level post-processing: per-image statistics kept over an evaluation epoch, finished at its end.

Some published protocols normalise scores over a category's whole test set (MoECLIP and AnomalyMoE
min-max normalise over it). ``SetLevelBuffer`` keeps only what such a protocol needs until the epoch
ends: the model's compact per-image statistics (scalars or token-grid maps, on CPU), labels and dataset
indices, and — only when the final map is not known per batch — the masks, bit-packed (1 bit per pixel).
Never full-size float maps. The per-category (min, max) of the named statistics are reduced over all
DDP ranks; every rank then finishes its own samples, so the metrics' usual sync counts each image once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from anomaly_zoo.data.loco_defects import pack_spro_item, unpack_spro_items

__all__ = ["SetLevelBuffer"]


@dataclass
class _CategoryStore:
    stats: dict[str, list[Tensor]] = field(default_factory=dict)
    labels: list[Tensor] = field(default_factory=list)
    index: list[Tensor] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)  # packed bits, one array per image
    mask_shapes: list[tuple[int, int]] = field(default_factory=list)
    spro: list[Any] = field(default_factory=list)  # MVTec LOCO sPRO keys, packed (data/loco_defects.py)

    def __len__(self) -> int:
        return sum(len(x) for x in self.labels)


class SetLevelBuffer:
    """Per-category store of one evaluation epoch's set statistics.

    Args:
        categories: every category of the evaluated set (the same list on every rank).
        range_names: the statistics whose per-category (min, max) over all elements are needed.
        keep_masks: keep the ground-truth masks (bit-packed) because the map is only known at the end.
    """

    def __init__(self, categories: Sequence[str], range_names: Sequence[str], keep_masks: bool) -> None:
        self.categories = list(categories)
        self.range_names = tuple(range_names)
        self.keep_masks = keep_masks
        self._stores = {c: _CategoryStore() for c in self.categories}

    def add(self, set_stats: Mapping[str, Tensor], batch: Mapping[str, Any]) -> None:
        """Keep one batch's statistics (each (B, ...)), split by category."""
        labels = batch["label"].reshape(-1).cpu()
        n = labels.shape[0]
        cats = batch["category"]
        cats = [cats] * n if isinstance(cats, str) else list(cats)
        missing = [name for name in self.range_names if name not in set_stats]
        if missing:
            raise RuntimeError(f"set_stats lacks {missing}, named in set_statistics.")
        for name, value in set_stats.items():
            if value.shape[0] != n:
                raise RuntimeError(f"set_stats['{name}'] has {value.shape[0]} rows for a batch of {n} images.")
        index = batch.get("index")
        index = torch.arange(n) if index is None else torch.as_tensor(index).reshape(-1).cpu()
        stats = {k: v.detach().cpu() for k, v in set_stats.items()}
        masks = batch["mask"].cpu() if self.keep_masks else None
        for c in dict.fromkeys(cats):
            rows = torch.tensor([i for i, x in enumerate(cats) if x == c])
            store = self._stores[c]
            for name, value in stats.items():
                store.stats.setdefault(name, []).append(value[rows])
            store.labels.append(labels[rows])
            store.index.append(index[rows])
            if masks is not None:
                for i in rows.tolist():
                    mask = masks[i].reshape(masks.shape[-2:]).numpy() > 0
                    store.masks.append(np.packbits(mask, axis=None))
                    store.mask_shapes.append(tuple(mask.shape))
                    store.spro.append(pack_spro_item(batch, i))

    def ranges(self, device: torch.device | None = None) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
        """``{category: {name: (min, max)}}`` over every element of every image of the category, all ranks."""
        k, n = len(self.categories), len(self.range_names)
        low = torch.full((k, n), float("inf"), dtype=torch.float64)
        high = torch.full((k, n), float("-inf"), dtype=torch.float64)
        for i, c in enumerate(self.categories):
            store = self._stores[c]
            for j, name in enumerate(self.range_names):
                values = store.stats.get(name)
                if values:
                    flat = torch.cat([v.reshape(-1) for v in values]).double()
                    if flat.numel():
                        low[i, j], high[i, j] = flat.min(), flat.max()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # A collective: every rank calls it, including ranks that saw no image of a category.
            backend_device = device if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
            low, high = low.to(backend_device), high.to(backend_device)
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            low, high = low.cpu(), high.cpu()
        return {
            c: {name: (low[i, j], high[i, j]) for j, name in enumerate(self.range_names)}
            for i, c in enumerate(self.categories)
        }

    def finish(
        self,
        finish_set: Callable[[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]], dict[str, Tensor]],
        update: Callable[[dict[str, Tensor], dict[str, Any]], None],
        device: torch.device | None = None,
        chunk_size: int = 32,
    ) -> None:
        """Call ``finish_set`` per category (in chunks of images) and hand the results to ``update``.

        ``update(output, batch)`` receives ``pred_score`` (and ``anomaly_map`` when masks were kept) with a
        batch of ``label``, ``category``, ``index`` (and ``mask``), like ``AnomalyMetrics.update``.
        """
        ranges = self.ranges(device)
        for c in self.categories:
            store = self._stores[c]
            if not len(store):
                continue
            stats = {name: torch.cat(values) for name, values in store.stats.items()}
            labels, index = torch.cat(store.labels), torch.cat(store.index)
            if self.keep_masks and len(set(store.mask_shapes)) > 1:
                chunk_size = 1  # native-size masks of different sizes cannot share a chunk
            for start in range(0, labels.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                chunk = {name: value[rows].to(device) if device is not None else value[rows]
                         for name, value in stats.items()}
                out = finish_set(chunk, ranges[c])
                n = labels[rows].shape[0]
                if out.get("pred_score") is None or out["pred_score"].reshape(-1).shape[0] != n:
                    raise RuntimeError(f"finish_set must return pred_score of shape ({n},) for the chunk.")
                batch: dict[str, Any] = {"label": labels[rows], "index": index[rows], "category": [c] * n}
                output = {"pred_score": out["pred_score"].reshape(-1).float()}
                if self.keep_masks:
                    if out.get("anomaly_map") is None:
                        raise RuntimeError("finish_set must return anomaly_map: it was not given per batch.")
                    batch["mask"] = self._unpack(store, rows)
                    if store.spro and store.spro[0] is not None:
                        batch.update(unpack_spro_items(store.spro[rows]))
                    output["anomaly_map"] = out["anomaly_map"]
                if device is not None:
                    batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                update(output, batch)
        self._stores = {c: _CategoryStore() for c in self.categories}

    @staticmethod
    def _unpack(store: _CategoryStore, rows: slice) -> Tensor:
        masks = []
        for packed, (h, w) in zip(store.masks[rows], store.mask_shapes[rows]):
            masks.append(torch.from_numpy(np.unpackbits(packed, count=h * w).reshape(1, h, w)))
        return torch.stack(masks)
