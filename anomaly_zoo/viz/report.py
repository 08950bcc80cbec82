"""``report.html``: one self-contained page per test run (no external files, images inlined as base64).

Sections: the results table and its caption; the stored thresholds; per category the image and pixel ROC
curves, the PRO curve, the histogram of normal vs anomalous image scores with the threshold, and the
worst false positives (highest-scored normal images) and false negatives (lowest-scored anomalous images)
with their overlays. Charts are inline SVG written here: a few polylines need no plotting library.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from anomaly_zoo.data.transforms import NORMALIZATIONS
from anomaly_zoo.metrics.curves import rank_ties
from anomaly_zoo.metrics.pro import pro_curve_points
from anomaly_zoo.viz.heatmap import denormalize, overlay_heatmap

if TYPE_CHECKING:  # pandas is imported where a table is built: start-up (e.g. `predict`) never needs it
    import pandas as pd

__all__ = ["ReportCollector", "write_report", "REPORT_SECTIONS"]

#: ``id``s of the page's sections (per category: ``roc-<i>``, ``pro-<i>``, ``hist-<i>``, ``worst-<i>``).
REPORT_SECTIONS = ("results", "thresholds", "categories")
_MAX_POINTS = 400  # per curve: enough for the eye, keeps the page small whatever the test-set size
_COUNTER = itertools.count()


@dataclass(order=True)
class _Case:
    key: float
    order: int
    score: float = field(compare=False)
    path: str = field(compare=False)
    image: np.ndarray | None = field(compare=False, default=None)
    anomaly_map: np.ndarray | None = field(compare=False, default=None)
    mask: np.ndarray | None = field(compare=False, default=None)


class ReportCollector:
    """Keeps, per category, the ``worst`` highest-scored normal and lowest-scored anomalous test images.

    Only those few images are kept (thumbnail, map, mask), so memory does not grow with the test set.
    Scores for histograms and curves come from the metrics' own (DDP-synced) states at the end.
    """

    def __init__(self, categories: Sequence[str], normalization: str | None = None, worst: int = 3,
                 thumbnail: int = 192) -> None:
        self.categories = list(categories)
        self.mean, self.std = NORMALIZATIONS.get(normalization or "", (None, None))
        self.worst = worst
        self.thumbnail = thumbnail
        self.false_positives: dict[str, list[_Case]] = {c: [] for c in self.categories}
        self.false_negatives: dict[str, list[_Case]] = {c: [] for c in self.categories}
        self.map_range: list[float] = [math.inf, -math.inf]

    def update(self, output: dict[str, Any], batch: dict[str, Any]) -> None:
        scores = output.get("pred_score")
        if scores is None:
            return
        maps = output.get("anomaly_map")
        if maps is not None:
            self.map_range = [min(self.map_range[0], float(maps.min())), max(self.map_range[1], float(maps.max()))]
        labels = batch["label"].reshape(-1).tolist()
        paths = batch.get("path") or [f"#{int(i)}" for i in batch["index"].reshape(-1)]
        for i, (score, label) in enumerate(zip(scores.reshape(-1).tolist(), labels)):
            category = batch["category"][i]
            # Min-heaps: keep the k largest normal scores and the k smallest anomalous ones.
            heap, key = ((self.false_positives, score) if label == 0 else (self.false_negatives, -score))
            cases = heap[category]
            if len(cases) >= self.worst and key <= cases[0].key:
                continue
            case = _Case(key, next(_COUNTER), score, str(paths[i]))
            if maps is not None and "image" in batch:  # set-level scores arrive at epoch end, without images
                case.image = denormalize(batch["image"][i].detach().float().cpu().numpy(), self.mean, self.std)
                case.anomaly_map = maps[i, 0].detach().float().cpu().numpy()
                case.mask = batch["mask"][i, 0].detach().cpu().numpy().astype(bool)
            if len(cases) >= self.worst:
                heapq.heapreplace(cases, case)
            else:
                heapq.heappush(cases, case)

    def curves(self, metrics: Any) -> dict[str, dict[str, Any]]:
        """Per category: image scores/labels, image and pixel ROC, PRO curve (states synced over ranks)."""
        out: dict[str, dict[str, Any]] = {}
        for i, category in enumerate(metrics.categories):
            image_metric, pixel_metric = metrics.image[i], metrics.pixel[i]
            scores, labels = _synced(image_metric, image_metric.samples)
            pixel_counts = _synced(pixel_metric, pixel_metric.ranked)
            entry: dict[str, Any] = {"scores": scores.cpu().numpy(), "labels": labels.cpu().numpy()}
            if scores.numel():
                entry["image_roc"] = _roc(rank_ties(scores, scores[labels.bool()]))
            if pixel_counts.n_pos and pixel_counts.n_neg:
                entry["pixel_roc"] = _roc(pixel_counts)
                if pixel_counts.pro is not None and pixel_counts.n_regions:
                    fpr, pro = pro_curve_points(pixel_counts)
                    entry["pro"] = (fpr.numpy(), pro.numpy())
            entry["fpr_limit"] = getattr(pixel_metric, "fpr_limit", 0.3)
            out[category] = entry
        return out


def _synced(metric: Any, fn: Any) -> Any:
    with metric.sync_context(dist_sync_fn=metric.dist_sync_fn, should_sync=metric._to_sync,
                             should_unsync=metric._should_unsync):
        return fn()


def _roc(counts: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if counts.n_pos == 0 or counts.n_neg == 0:
        return None
    tp, fp = counts.cumulative()
    fpr = torch.cat([tp.new_zeros(1), fp]).double() / counts.n_neg
    tpr = torch.cat([tp.new_zeros(1), tp]).double() / counts.n_pos
    return fpr.cpu().numpy(), tpr.cpu().numpy()


# ---- page ------------------------------------------------------------------------------------------------
def write_report(
    path: str | Path,
    table: pd.DataFrame,
    caption: str,
    collector: ReportCollector,
    curves: dict[str, dict[str, Any]] | None,
    thresholds: Any = None,
) -> Path:
    """Write the self-contained HTML report; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves = curves or {}
    parts = [
        _HEAD,
        "<h1>anomaly-zoo test report</h1>",
        f'<section id="results"><h2>Results</h2><p class="caption">{html.escape(caption)}</p>',
        _table_html(table),
        "</section>",
        '<section id="thresholds"><h2>Thresholds</h2>',
        f"<p>{html.escape(thresholds.describe())}</p>" if thresholds is not None else
        "<p>No thresholds applied to these scores (none stored, or a set-level protocol rescaled them).</p>",
        "</section>",
        '<section id="categories"><h2>Per category</h2>',
    ]
    value_range = _value_range(collector, thresholds)
    for i, category in enumerate(collector.categories):
        entry = curves.get(category)
        if entry is None:
            continue
        parts.append(f'<section class="category" id="category-{i}"><h3>{html.escape(category)}</h3><div class="row">')
        roc_series = [(name, entry[key], colour) for name, key, colour in
                      (("image ROC", "image_roc", "#1f77b4"), ("pixel ROC", "pixel_roc", "#d62728")) if entry.get(key)]
        parts.append(_figure(f"roc-{i}", "ROC", _line_chart(roc_series, "FPR", "TPR", diagonal=True)))
        if entry.get("pro") is not None:
            pro = _line_chart([("PRO", entry["pro"], "#2ca02c")], "FPR", "PRO", x_marker=entry["fpr_limit"])
            parts.append(_figure(f"pro-{i}", f"PRO curve (AUPRO integrates to FPR {entry['fpr_limit']:g})", pro))
        else:
            parts.append(_figure(f"pro-{i}", "PRO curve", '<p class="na">no defect regions: undefined</p>'))
        own = thresholds.for_category(category) if thresholds is not None else None  # what decided here
        parts.append(_figure(f"hist-{i}", "Image scores: normal vs anomalous",
                             _histogram(entry["scores"], entry["labels"], own.image if own is not None else None)))
        parts.append("</div>")
        parts.append(_worst_cases(i, collector, category, value_range, own))
        parts.append("</section>")
    parts += ["</section>", "</body></html>"]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


_HEAD = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>anomaly-zoo report</title>
<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}th:first-child,td:first-child{text-align:left}
.caption{max-width:70em;color:#444}.row{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
figcaption{font-size:.85em;color:#444}.cases{display:flex;flex-wrap:wrap;gap:.8em}.case{font-size:.8em;
max-width:200px;word-break:break-all}.case img{width:192px;image-rendering:pixelated}.na{color:#888}
svg text{font-size:10px}</style></head><body>"""


def _figure(element_id: str, title: str, body: str) -> str:
    return f'<figure id="{element_id}">{body}<figcaption>{html.escape(title)}</figcaption></figure>'


def _table_html(table: pd.DataFrame) -> str:
    shown = table.astype(float).round(1)
    return shown.to_html(na_rep="–", float_format=lambda v: f"{v:.1f}", border=0)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= _MAX_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, _MAX_POINTS).round().astype(int))
    return x[keep], y[keep]


_W, _H, _PAD = 260, 220, 32


def _axes(x_label: str, y_label: str, x_ticks: Sequence[tuple[float, str]], y_ticks: Sequence[tuple[float, str]]) -> str:
    inner_w, inner_h = _W - 2 * _PAD, _H - 2 * _PAD
    out = [f'<rect x="{_PAD}" y="{_PAD}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#999"/>']
    for frac, label in x_ticks:
        x = _PAD + frac * inner_w
        out.append(f'<text x="{x:.1f}" y="{_H - _PAD + 12}" text-anchor="middle">{html.escape(label)}</text>')
    for frac, label in y_ticks:
        y = _H - _PAD - frac * inner_h
        out.append(f'<text x="{_PAD - 4}" y="{y + 3:.1f}" text-anchor="end">{html.escape(label)}</text>')
    out.append(f'<text x="{_W / 2}" y="{_H - 4}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text x="10" y="{_H / 2}" text-anchor="middle" transform="rotate(-90 10 {_H / 2})">'
               f"{html.escape(y_label)}</text>")
    return "".join(out)


def _unit_ticks() -> list[tuple[float, str]]:
    return [(v, f"{v:g}") for v in (0.0, 0.5, 1.0)]


def _line_chart(series: list[tuple[str, tuple[np.ndarray, np.ndarray], str]], x_label: str, y_label: str,
                diagonal: bool = False, x_marker: float | None = None) -> str:
    """Curves on the unit square (ROC, PRO)."""
    if not series:
        return '<p class="na">undefined (one class missing)</p>'
    inner_w, inner_h = _W - 2 * _PAD, _H - 2 * _PAD
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" class="chart">',
           _axes(x_label, y_label, _unit_ticks(), _unit_ticks())]
    if diagonal:
        out.append(f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_PAD}" stroke="#ccc" stroke-dasharray="3"/>')
    if x_marker is not None:
        x = _PAD + x_marker * inner_w
        out.append(f'<line x1="{x:.1f}" y1="{_PAD}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="#888" stroke-dasharray="2"/>')
    for k, (name, (xs, ys), colour) in enumerate(series):
        xs, ys = _thin(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
        points = " ".join(f"{_PAD + x * inner_w:.1f},{_H - _PAD - y * inner_h:.1f}" for x, y in zip(xs, ys))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<text x="{_PAD + 6}" y="{_PAD + 12 + 12 * k}" fill="{colour}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _histogram(scores: np.ndarray, labels: np.ndarray, threshold: float | None, bins: int = 30) -> str:
    if scores.size == 0:
        return '<p class="na">no scores</p>'
    low, high = float(scores.min()), float(scores.max())
    if threshold is not None and math.isfinite(threshold):
        low, high = min(low, threshold), max(high, threshold)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    groups = [("normal", scores[labels == 0], "#1f77b4"), ("anomalous", scores[labels == 1], "#d62728")]
    counts = [np.histogram(values, edges)[0] for _, values, _ in groups]
    top = max(1, max(int(c.max()) for c in counts))
    inner_w, inner_h = _W - 2 * _PAD, _H - 2 * _PAD
    x_ticks = [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" class="chart">',
           _axes("image score", "images", x_ticks, [(0.0, "0"), (1.0, str(top))])]
    bar = inner_w / bins
    for k, ((name, _, colour), count) in enumerate(zip(groups, counts)):
        for b, c in enumerate(count):
            if c:
                h = c / top * inner_h
                out.append(f'<rect x="{_PAD + b * bar:.1f}" y="{_H - _PAD - h:.1f}" width="{bar:.1f}" '
                           f'height="{h:.1f}" fill="{colour}" fill-opacity="0.5"/>')
        out.append(f'<text x="{_PAD + 6}" y="{_PAD + 12 + 12 * k}" fill="{colour}">{name} ({int(count.sum())})</text>')
    if threshold is not None and math.isfinite(threshold):
        x = _PAD + (threshold - low) / (high - low) * inner_w
        out.append(f'<line x1="{x:.1f}" y1="{_PAD}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="#000" '
                   f'stroke-dasharray="4" class="threshold"/>')
        out.append(f'<text x="{x + 3:.1f}" y="{_PAD + 40}">threshold</text>')
    out.append("</svg>")
    return "".join(out)


def _value_range(collector: ReportCollector, thresholds: Any) -> tuple[float, float]:
    if thresholds is not None:
        return tuple(thresholds.pixel_range)
    low, high = collector.map_range
    return (low, high) if math.isfinite(low) and high > low else (0.0, 1.0)


def _png_data_uri(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _case_html(case: _Case, value_range: tuple[float, float], thresholds: Any, thumbnail: int) -> str:
    where = Path(case.path)
    text = f"{html.escape(f'{where.parent.name}/{where.name}')}<br>score {case.score:.4g}"
    if thresholds is not None:
        text += " (above threshold)" if case.score >= thresholds.image else " (below threshold)"
    if case.image is None:
        return f'<div class="case">{text}<br><span class="na">no image kept (scores finished at epoch end)</span></div>'
    image, anomaly_map, mask = case.image, case.anomaly_map, case.mask
    if image.shape[:2] != anomaly_map.shape:
        image = np.asarray(Image.fromarray(image).resize(anomaly_map.shape[::-1], Image.BILINEAR))
    predicted = anomaly_map >= thresholds.pixel if thresholds is not None else None
    picture = overlay_heatmap(image, anomaly_map, value_range, mask=mask, predicted=predicted)
    scale = thumbnail / max(picture.shape[:2])
    if scale < 1:
        size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
        picture = np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))
    return (f'<div class="case"><img alt="{html.escape(case.path)}" src="{_png_data_uri(picture)}">'
            f"<br>{text}</div>")


def _worst_cases(i: int, collector: ReportCollector, category: str, value_range: tuple[float, float],
                 thresholds: Any) -> str:
    out = [f'<div id="worst-{i}"><h4>Worst false positives (highest-scored normal images)</h4><div class="cases">']
    fps = sorted(collector.false_positives[category], key=lambda c: -c.score)
    fns = sorted(collector.false_negatives[category], key=lambda c: c.score)
    out += [_case_html(c, value_range, thresholds, collector.thumbnail) for c in fps] or ['<p class="na">none</p>']
    out.append("</div><h4>Worst false negatives (lowest-scored anomalous images)</h4><div class=\"cases\">")
    out += [_case_html(c, value_range, thresholds, collector.thumbnail) for c in fns] or ['<p class="na">none</p>']
    out.append("</div><p class=\"caption\">Heat map in JET on one range for the whole run; white outline: "
               "predicted region (map ≥ pixel threshold); green outline: ground truth.</p></div>")
    return "".join(out)
