"""Results tables: the column set the field reports (ADer's), as CSV and Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where a table is built: start-up (e.g. `predict`) never needs it
    import pandas as pd


__all__ = ["COLUMNS", "format_results_table", "save_results", "load_results"]

#: Columns of a results table, in percent; mAD is the mean of the other seven.
COLUMNS = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO", "mAD")


def format_results_table(df: pd.DataFrame, caption: str) -> str:
    """Markdown table with one decimal, preceded by its caption (resolution, epochs, seed, device, score rule)."""
    shown = df.astype(float).round(1).astype(object).where(df.notna(), None)
    body = shown.to_markdown(floatfmt=".1f", missingval="–")
    return f"{caption}\n\n{body}\n" if caption else f"{body}\n"


def save_results(df: pd.DataFrame, directory: str | Path, stem: str, caption: str) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (full precision, the source of truth) and ``<stem>.md``; return both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = directory / f"{stem}.csv", directory / f"{stem}.md"
    df.to_csv(csv_path, index_label=df.index.name or "category")
    md_path.write_text(format_results_table(df, caption), encoding="utf-8")
    return csv_path, md_path


def load_results(csv_path: str | Path) -> pd.DataFrame:
    """Read a results CSV written by :func:`save_results` (tables are regenerated from it)."""
    import pandas as pd
    return pd.read_csv(csv_path, index_col=0)
