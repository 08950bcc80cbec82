"""Results tables from run records: the synthetic comparison (mean ± std over seeds), per-category tables,
the dataset suites, the published numbers beside ours, and the speed / cost table.

Every table is a pandas frame first (written as CSV, the source of truth) and Markdown second.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_zoo.metrics import COLUMNS
from benchmarks.suite.runner import Record, collect
from benchmarks.suite.spec import ROOT

PUBLISHED = ROOT / "benchmarks" / "published.csv"
#: Columns of the short side-by-side tables (``make demo``, the README).
HEADLINE = ("I-AUROC", "P-AUROC", "AUPRO", "mAD")
STATUS_TEXT = {"failed": "failed", "skipped": "skipped"}


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns present, in the field's order (any extra metric a run reports goes last)."""
    known = [c for c in COLUMNS if c in frame.columns]
    fixed = {"suite", "model", "dataset", "seed", "config", "status", "reason", "category", "code version", "finished"}
    extra = [c for c in frame.columns if c not in fixed and c not in known and pd.api.types.is_numeric_dtype(frame[c])]
    return known + extra


def display_columns(frame: pd.DataFrame) -> list[str]:
    """Markdown columns: the field's set (:data:`COLUMNS`) plus any PRO variant (e.g. sPRO); the CSVs keep all."""
    return [c for c in metric_columns(frame) if c in COLUMNS or "PRO" in c]


def pm(mean: float, std: float, n: int, digits: int = 1) -> str:
    """``96.5 ± 0.3`` (sample std over seeds; no ± for a single seed), ``–`` for NaN."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if n < 2 or std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# ---- run statistics (from the probe) -------------------------------------------------------------
def run_stats(records: list[Record]) -> pd.DataFrame:
    """One row per successful run: timings, throughput, memory, from the probe of that very run."""
    rows = []
    for r in records:
        if not r.succeeded:
            continue
        p = r.probe
        inference, backbone, test_images = p.get("inference_s"), p.get("backbone_s"), p.get("test_images") or 0
        train_images, train_step = p.get("train_images") or 0, p.get("train_step_s") or 0.0
        test_loop = p.get("test_loop_s")
        rows.append({
            "suite": r.suite, "model": r.model, "dataset": r.dataset, "seed": r.seed, "config": r.config,
            "epochs": p.get("epochs"),
            "train time (s)": p.get("fit_s"),
            "train img/s": train_images / train_step if train_step else np.nan,
            "inference img/s": test_images / inference if inference else np.nan,
            "ms/image": 1000 * inference / test_images if inference and test_images else np.nan,
            "backbone ms/image": 1000 * backbone / test_images if backbone and test_images else np.nan,
            "ratio to backbone": inference / backbone if inference and backbone else np.nan,
            "peak RSS (MB)": p.get("peak_rss_mb"),
            "CUDA max allocated (MB)": p.get("cuda_max_allocated_mb", np.nan),
            "evaluation share of test loop (%)": 100 * p.get("evaluation_s", np.nan) / test_loop if test_loop else np.nan,
            "test images": test_images,
            "device": p.get("device"),
            "torch threads": p.get("torch_threads"),
            "backbone modules": ", ".join(p.get("backbone_modules") or []),
            "backbone timing": p.get("backbone_error") or p.get("backbone_method") or "",
            "run time (s)": r.duration_s,
        })
    return pd.DataFrame(rows)


# ---- per-suite summaries -------------------------------------------------------------------------
def _status_of(records: list[Record], name: str) -> tuple[str, str]:
    """Overall status of an entry (all its seeds): ok if any seed succeeded, else the first reason."""
    own = [r for r in records if f"{r.suite}/{r.model}/{r.dataset}" == name]
    if any(r.succeeded for r in own):
        failed = [r for r in own if r.status == "failed"]
        stale = [r for r in own if r.succeeded and r.reason]
        notes = ([f"{len(failed)} seed(s) failed: {failed[0].reason}"] if failed else []) + \
            ([f"{len(stale)} seed(s) {stale[0].reason}"] if stale else [])
        return "ok", "; ".join(notes)
    first = own[0]
    return first.status, first.reason


def summary_frame(records: list[Record], suite: str) -> pd.DataFrame:
    """Per entry of ``suite``: mean and std over seeds of the mean row, train time, ms/image, status.

    Numeric columns ``<metric>`` (mean) and ``<metric> std``; ``seeds`` = successful seeds.
    """
    own = [r for r in records if r.suite == suite]
    frame = collect(own)
    stats = run_stats(own)
    rows = []
    for name in dict.fromkeys(f"{r.suite}/{r.model}/{r.dataset}" for r in own):
        _, model, dataset = name.split("/", 2)
        status, reason = _status_of(own, name)
        row: dict = {"model": model, "dataset": dataset, "status": status, "reason": reason}
        means = frame[(frame.model == model) & (frame.dataset == dataset) & (frame.category == "mean")]
        row["seeds"] = len(means)
        for column in metric_columns(frame) if not frame.empty else []:
            values = means[column].astype(float) if column in means else pd.Series(dtype=float)
            row[column] = values.mean() if len(values) else np.nan
            row[f"{column} std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        if not stats.empty:
            mine = stats[(stats.model == model) & (stats.dataset == dataset)]
            for column in ("train time (s)", "ms/image"):
                row[column] = mine[column].mean() if len(mine) else np.nan
                row[f"{column} std"] = mine[column].std(ddof=1) if len(mine) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame, columns: list[str], extra: tuple[str, ...] = ("train time (s)", "ms/image"),
                     with_dataset: bool = False) -> str:
    """Markdown of :func:`summary_frame`: ``mean ± std`` cells, failed/skipped entries with their reason."""
    head = (["model", "dataset"] if with_dataset else ["model"]) + ["seeds", *columns, *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--"] * (2 if with_dataset else 1) + ["--:"] * (len(head) - (2 if with_dataset else 1))) + "|"]
    for _, row in summary.iterrows():
        start = [f"`{row['model']}`"] + ([str(row["dataset"])] if with_dataset else [])
        if row["status"] != "ok":
            cells = [f"**{row['status']}**: {row['reason']}"] + [""] * (len(head) - len(start) - 1)
        else:
            n = int(row["seeds"])
            digits = {"train time (s)": 1, "ms/image": 2}
            cells = [str(n)] + [pm(row.get(c, np.nan), row.get(f"{c} std", np.nan), n, digits.get(c, 1))
                                for c in [*columns, *extra]]
        lines.append("| " + " | ".join(start + cells) + " |")
    notes = [f"{row['model']}: {row['reason']}" for _, row in summary.iterrows() if row["status"] == "ok" and row["reason"]]
    return "\n".join(lines) + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "") + "\n"


def per_category_markdown(records: list[Record], suite: str, model: str, dataset: str) -> str | None:
    """Per-category table of one entry: ``mean ± std`` over its seeds."""
    frame = collect([r for r in records if r.suite == suite and r.model == model and r.dataset == dataset])
    frame = frame[frame.category.notna()] if "category" in frame else frame
    if frame.empty:
        return None
    columns = display_columns(frame)
    grouped = frame.groupby("category", sort=False)[columns]
    mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.size()
    order = [c for c in mean.index if c != "mean"] + (["mean"] if "mean" in mean.index else [])
    lines = ["| category | " + " | ".join(columns) + " |", "|:--|" + "--:|" * len(columns)]
    for category in order:
        cells = [pm(mean.loc[category, c], std.loc[category, c], int(n.loc[category])) for c in columns]
        label = f"**{category}**" if category == "mean" else category
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- published numbers ---------------------------------------------------------------------------
def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def published_comparison(records: list[Record], entries_settings: dict[tuple[str, str], str | None],
                         published: pd.DataFrame) -> pd.DataFrame:
    """Each published row, then ours in the same setting (model, dataset, setting) and ours − published.

    ``entries_settings`` maps (model, dataset) of every suite entry to its ``setting``.
    """
    columns = [c for c in COLUMNS if c in published.columns]
    by_entry: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        setting = entries_settings.get((r.model, r.dataset))
        if setting:
            by_entry.setdefault((r.model, r.dataset, setting), []).append(r)
    rows = []
    for _, pub in published.iterrows():
        key = (pub["model"], pub["dataset"], pub["setting"])
        base = {"model": pub["model"], "dataset": pub["dataset"], "setting": pub["setting"]}
        rows.append({**base, "row": "published", "source": pub["source"], "note": pub.get("note", ""),
                     **{c: pub[c] for c in columns}})
        own = by_entry.get(key)
        if own is None:
            rows.append({**base, "row": "ours", "source": "", "note": "no suite entry in this setting"})
            continue
        ok = [r for r in own if r.succeeded]
        if not ok:
            rows.append({**base, "row": "ours", "source": "", "note": f"{own[0].status}: {own[0].reason}"})
            continue
        frame = collect(ok)
        means = frame[frame.category == "mean"]
        ours = {c: means[c].astype(float).mean() if c in means else np.nan for c in columns}
        rows.append({**base, "row": "ours", "source": f"this suite, {len(ok)} seed(s)", "note": "", **ours})
        rows.append({**base, "row": "difference", "source": "ours − published", "note": "",
                     **{c: ours[c] - float(pub[c]) if pd.notna(pub[c]) else np.nan for c in columns}})
    return pd.DataFrame(rows)


def comparison_markdown(comparison: pd.DataFrame) -> str:
    columns = [c for c in COLUMNS if c in comparison.columns]
    lines = ["| model | dataset | setting | row | source | " + " | ".join(columns) + " | note |",
             "|:--|:--|:--|:--|:--|" + "--:|" * len(columns) + ":--|"]
    for _, row in comparison.iterrows():
        signed = row["row"] == "difference"
        cells = []
        for c in columns:
            v = row.get(c, np.nan)
            cells.append("–" if pd.isna(v) else (f"{v:+.1f}" if signed else f"{v:.1f}"))
        note = row.get("note", "")
        note = "" if pd.isna(note) else str(note)
        lines.append(f"| `{row['model']}` | {row['dataset']} | {row['setting']} | {row['row']} | {row['source']} | "
                     + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines) + "\n"


# ---- speed ---------------------------------------------------------------------------------------
SPEED_COLUMNS = ("inference img/s", "ms/image", "train img/s", "backbone ms/image", "ratio to backbone",
                 "peak RSS (MB)", "CUDA max allocated (MB)", "evaluation share of test loop (%)")


def speed_frame(records: list[Record], suite: str) -> pd.DataFrame:
    """Per model of ``suite``: the median over seeds of every speed and cost column."""
    stats = run_stats([r for r in records if r.suite == suite])
    if stats.empty:
        return stats
    numeric = [c for c in (*SPEED_COLUMNS, "train time (s)", "epochs", "test images") if c in stats]
    grouped = stats.groupby(["model", "dataset"], sort=False)
    out = grouped[numeric].median()
    out["runs"] = grouped.size()
    out["backbone modules"] = grouped["backbone modules"].first()
    out["backbone timing"] = grouped["backbone timing"].first()
    out["device"] = grouped["device"].first()
    out["torch threads"] = grouped["torch threads"].first()
    return out.reset_index()


def speed_markdown(speed: pd.DataFrame) -> str:
    if speed.empty:
        return "No successful run to time.\n"
    head = ["model", "runs", "threads", *SPEED_COLUMNS, "train time (s)", "epochs", "frozen module(s) timed"]
    lines = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * (len(head) - 2) + ":--|"]
    digits = {"inference img/s": 1, "ms/image": 2, "train img/s": 1, "backbone ms/image": 2, "ratio to backbone": 2,
              "peak RSS (MB)": 0, "CUDA max allocated (MB)": 0, "evaluation share of test loop (%)": 1,
              "train time (s)": 1, "epochs": 0}
    for _, row in speed.iterrows():
        cells = [f"`{row['model']}`", str(int(row["runs"])), str(row.get("torch threads") or "–")]
        for c in (*SPEED_COLUMNS, "train time (s)", "epochs"):
            v = row.get(c, np.nan)
            text = "–" if pd.isna(v) else f"{v:.{digits[c]}f}"
            cells.append(text + ("×" if c == "ratio to backbone" and text != "–" else ""))
        timing = row.get("backbone timing") or ""
        cells.append(str(row.get("backbone modules") or "–")
                     + (f" ({timing})" if timing and timing != "forward hooks" else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
