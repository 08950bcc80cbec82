"""Helpers every on-disk layout parser shares: listing folders, requiring images, one clear error per problem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomaly_zoo.data.errors import DatasetError

#: How many offending files an error message lists before it says "and N more".
_SHOWN = 5


def subdirs(directory: Path) -> list[Path]:
    """Visible sub-directories of ``directory``, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_images(images: list[Path], directory: Path, what: str) -> list[Path]:
    """Fail when a split directory that must hold images is missing or holds none."""
    if not images:
        state = "is empty (no image files)" if directory.is_dir() else "does not exist"
        raise DatasetError(f"No {what}: '{directory}' {state}.")
    return images


def format_list(lines: Sequence[str]) -> str:
    """The first few ``lines`` indented, then "… and N more" (error messages stay readable)."""
    shown = "\n".join(f"  {line}" for line in lines[:_SHOWN])
    return shown + (f"\n  … and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else "")


def missing_mask_error(missing: Sequence[tuple[Path, Path]], hint: str) -> DatasetError:
    """One error for every anomalous image without a mask: (image, expected mask) pairs, first few shown."""
    lines = format_list([f"'{image}' (expected '{expected}')" for image, expected in missing])
    return DatasetError(f"{len(missing)} anomalous image(s) have no ground-truth mask:\n{lines}\n{hint}")
