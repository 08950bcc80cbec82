"""PNG plots linked from the Markdown: per model and dataset the ROC and PRO curves, and the synthetic bar chart.

The curves come from ``curves.npz``, which the probe writes from the run's own metric states (the same
ranked counts the table's numbers are computed from).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display (CI, ssh, the benchmark's subprocesses)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.suite.runner import Record  # noqa: E402


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def load_curves(record: Record) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{"image_roc" | "pixel_roc" | "pro": {category: (x, y)}}`` of one run (empty if it has none)."""
    path = Path(record.run_dir) / "curves.npz"
    if not path.is_file():
        return {}
    data = np.load(path)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key in data.files:
        kind, category, axis = key.split("/")
        if axis == "fpr":
            y_name = "pro" if kind == "pro" else "tpr"
            out.setdefault(kind, {})[category] = (data[key], data[f"{kind}/{category}/{y_name}"])
    return out


def curves_png(record: Record, path: Path, fpr_limit: float = 0.3) -> Path | None:
    """Image ROC, pixel ROC and PRO (up to ``fpr_limit``, the AUPRO range) of every category of one run."""
    curves = load_curves(record)
    if not curves:
        return None
    panels = [("image_roc", "image ROC", "FPR", "TPR", 1.0), ("pixel_roc", "pixel ROC", "FPR", "TPR", 1.0),
              ("pro", f"PRO (AUPRO range, FPR ≤ {fpr_limit})", "FPR", "PRO", fpr_limit)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (kind, title, xlabel, ylabel, xmax) in zip(axes, panels):
        for category, (x, y) in sorted(curves.get(kind, {}).items()):
            ax.plot(x, y, lw=1.3, label=category)
        if kind != "pro":
            ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, xmax), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        if not curves.get(kind):
            ax.text(0.5, 0.5, "undefined\n(no defect pixels)", ha="center", va="center", transform=ax.transAxes)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"{record.model} on {record.dataset} (seed {record.seed})")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)  # figures are never reused; closing keeps a long suite's memory flat
    return path


def comparison_png(summary: pd.DataFrame, columns: tuple[str, ...], path: Path, title: str) -> Path | None:
    """Grouped bars: one group per metric, one bar per model (mean over seeds, error bar = std)."""
    ok = summary[summary.status == "ok"]
    if ok.empty:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns) * max(1, len(ok)) / 2), 4.2))
    width = 0.8 / len(ok)
    x = np.arange(len(columns))
    for i, (_, row) in enumerate(ok.iterrows()):
        means = [row.get(c, np.nan) for c in columns]
        stds = [row.get(f"{c} std", np.nan) for c in columns]
        stds = [0 if pd.isna(s) else s for s in stds]
        bars = ax.bar(x + (i - (len(ok) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=row["model"])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(x, columns)
    low = np.nanmin(ok[list(columns)].to_numpy(dtype=float))
    ax.set_ylim(max(0, (low // 10) * 10 - 10), 112)  # headroom above 100 for the legend row
    ax.set_ylabel("%  (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", ncol=len(ok), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
