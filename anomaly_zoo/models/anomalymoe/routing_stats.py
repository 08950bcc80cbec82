"""Which experts each category (and dataset) selects at test time: a CSV table and a heat-map PNG.

Rows are categories (a ``dataset/category`` name gives the dataset column); per expert the fraction of the
category's images that selected it and its mean routing weight. Experts are named ``patch0 … component5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from anomaly_zoo.models.anomalymoe.router import Routing


def expert_names(counts: Sequence[int]) -> list[str]:
    return [f"{family}{i}" for family, n in zip(("patch", "global", "component"), counts) for i in range(n)]


def split_dataset(category: str) -> tuple[str, str]:
    for sep in ("/", ":"):
        if sep in category:
            dataset, _, name = category.partition(sep)
            return dataset, name
    return "", category


class RoutingStatistics:
    """Accumulates, per category, the selection counts and routing-weight sums of every expert."""

    def __init__(self, counts: Sequence[int]) -> None:
        self.names = expert_names(counts)
        self.selected: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.images: dict[str, int] = {}

    def update(self, categories: Sequence[str] | str, routing: Routing) -> None:
        n = routing.weights.shape[0]
        cats = [categories] * n if isinstance(categories, str) else list(categories)
        sel, w = routing.selected.detach().cpu().double(), routing.weights.detach().cpu().double()
        for c in dict.fromkeys(cats):
            rows = torch.tensor([i for i, x in enumerate(cats) if x == c])
            self.selected[c] = self.selected.get(c, torch.zeros(len(self.names), dtype=torch.float64)) + sel[rows].sum(0)
            self.weights[c] = self.weights.get(c, torch.zeros(len(self.names), dtype=torch.float64)) + w[rows].sum(0)
            self.images[c] = self.images.get(c, 0) + len(rows)

    def sync(self, module=None) -> None:
        """Sum the counts of every DDP rank (a collective: every rank calls it)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.selected, self.weights, self.images))
        self.selected, self.weights, self.images = {}, {}, {}
        for sel, w, n in gathered:
            for c in sel:
                self.selected[c] = self.selected.get(c, 0) + sel[c]
                self.weights[c] = self.weights.get(c, 0) + w[c]
                self.images[c] = self.images.get(c, 0) + n[c]

    def table(self) -> pd.DataFrame:
        rows = []
        for c in self.images:
            dataset, name = split_dataset(c)
            n = self.images[c]
            row = {"dataset": dataset, "category": name, "images": n}
            row.update({f"sel_{e}": float(v) / n for e, v in zip(self.names, self.selected[c])})
            row.update({f"w_{e}": float(v) / n for e, v in zip(self.names, self.weights[c])})
            rows.append(row)
        return pd.DataFrame(rows)

    def as_metrics(self) -> dict[str, float]:
        out = {}
        for c, n in self.images.items():
            for e, v in zip(self.names, self.selected[c]):
                out[f"routing/{c}/{e}"] = float(v) / n
        return out

    def heatmap(self, cell: int = 28) -> np.ndarray:
        """BGR image: rows = categories, columns = experts, colour = selection fraction (JET, 0..1)."""
        cats = list(self.images)
        values = np.array([[float(v) / self.images[c] for v in self.selected[c]] for c in cats])
        label_w, header_h = 12 + 8 * max(len(c) for c in cats), 90
        h, w = header_h + cell * len(cats), label_w + cell * len(self.names)
        canvas = np.full((h, w, 3), 255, np.uint8)
        colours = cv2.applyColorMap((values.clip(0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        for i in range(len(cats)):
            for j in range(len(self.names)):
                y, x = header_h + i * cell, label_w + j * cell
                canvas[y:y + cell - 1, x:x + cell - 1] = colours[i, j]
            cv2.putText(canvas, cats[i], (4, header_h + i * cell + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX,
                        0.35, (0, 0, 0), 1, cv2.LINE_AA)
        header = np.full((cell * len(self.names), header_h, 3), 255, np.uint8)  # rotated column labels
        for j, name in enumerate(self.names):
            cv2.putText(header, name, (4, j * cell + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1,
                        cv2.LINE_AA)
        canvas[:header_h, label_w:] = np.rot90(header)[:, :, :]
        return canvas

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        csv_path, png_path = directory / "routing_statistics.csv", directory / "routing_statistics.png"
        self.table().to_csv(csv_path, index=False, float_format="%.4f")
        cv2.imwrite(str(png_path), self.heatmap())
        return [csv_path, png_path]
