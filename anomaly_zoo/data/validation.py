"""Pre-fit check of every file a command will read: headers only, then ONE summary of every problem.

A wrong-size mask or a corrupt test image must not surface hours into a run, when the test loop
first reads it. Before anything trains, every image of every split the command uses is opened and
its header read (size, mode) without decoding the pixels (``PIL.Image.open`` is lazy; ``verify()``
walks a PNG's chunks and checks their CRCs, so truncated files are caught too). Masks are small and
are decoded, so an anomalous image whose mask is all zeros can be reported (a warning, counted once).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from anomaly_zoo.data.errors import DatasetError, EmptyMaskWarning
from anomaly_zoo.data.io import read_mask

#: How many problems the summary lists before "… and N more" (the first line already says how many).
SHOWN = 8
#: Modes ``read_image`` turns into RGB faithfully; "F" (float) and "I" beyond 16 bit have no fixed scale.
SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
     "I;16", "I;16B", "I;16L", "I;16N", "I"}
)
#: Show a progress bar only when checking takes longer than this (seconds).
PROGRESS_DELAY = 1.0


@dataclass
class FileReport:
    """What the check found: one line per problem, and the anomalous images with empty masks."""

    problems: list[str] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)
    checked: int = 0


def image_header(path: str) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """``((width, height), mode, None)`` from the file's header, or ``(None, None, problem)``."""
    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
            image.verify()
    except FileNotFoundError:
        return None, None, f"'{path}': file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        reason = str(err).replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(err).__name__
        return None, None, f"'{path}': corrupt or not an image ({reason})"
    return size, mode, None


def check_samples(samples: Sequence, split: str, batch_size: int = 1, native_size: bool = False,
                  progress: tqdm | None = None, report: FileReport | None = None) -> FileReport:
    """Check one split's samples (``anomaly_zoo.data.Sample``) and add what is wrong to ``report``.

    ``native_size`` (no ``image_size``) with ``batch_size > 1`` also reports images of different sizes,
    which could not be stacked into one batch.
    """
    report = report if report is not None else FileReport()
    sizes: dict[tuple[int, int], str] = {}
    for sample in samples:
        report.checked += 1
        if progress is not None:
            progress.update(1)
        size, mode, problem = image_header(sample.image_path)
        if problem:
            report.problems.append(f"{problem} ({split} split)")
            continue
        if mode not in SUPPORTED_MODES:
            report.problems.append(f"'{sample.image_path}': unsupported image mode '{mode}', convert it to 8-bit "
                                   f"or 16-bit grayscale, RGB or RGBA ({split} split)")
        sizes.setdefault(size, sample.image_path)
        defect_pixels, masks_readable = False, True
        for mask_path in sample.mask_paths:
            mask_size, _, problem = image_header(mask_path)
            if problem or mask_size != size:
                masks_readable = False
                report.problems.append(f"mask {problem} ({split} split)" if problem else (
                    f"mask '{mask_path}' is {mask_size[0]}x{mask_size[1]} (WxH) but its image "
                    f"'{sample.image_path}' is {size[0]}x{size[1]} ({split} split)"
                ))
                continue
            defect_pixels = defect_pixels or bool(read_mask(mask_path).any())
        if sample.label == 1 and sample.mask_paths and masks_readable and not defect_pixels:
            report.empty_masks.append(sample.image_path)
    if native_size and batch_size > 1 and len(sizes) > 1:
        examples = ", ".join(f"'{path}' {w}x{h}" for (w, h), path in list(sizes.items())[:3])
        report.problems.append(
            f"images of {len(sizes)} different sizes ({examples}) cannot share a batch: set `image_size` to "
            f"resize them all, or use batch size 1 (`batch_size` / `eval_batch_size`) ({split} split)"
        )
    return report


def check_datasets(datasets: Mapping[str, object], batch_sizes: Mapping[str, int] | None = None,
                   where: str = "the dataset") -> FileReport:
    """Check every split in ``datasets`` ({split: AnomalyDataset}); one ``DatasetError`` lists every problem.

    Datasets that do not hold file samples (in-memory arrays) are skipped. Anomalous images with an
    all-zero mask give one :class:`EmptyMaskWarning` with their count.
    """
    batch_sizes = batch_sizes or {}
    todo = {split: ds for split, ds in datasets.items() if _file_samples(ds) is not None}
    total = sum(len(_file_samples(ds)) for ds in todo.values())
    report = FileReport()
    with tqdm(total=total, desc="Checking dataset files", unit="file", delay=PROGRESS_DELAY, leave=False) as bar:
        for split, dataset in todo.items():
            check_samples(_file_samples(dataset), split, batch_sizes.get(split, 1),
                          native_size=getattr(dataset, "image_size", None) is None, progress=bar, report=report)
    if report.problems:  # the empty masks join the summary: one report, then exit
        notes = [_empty_mask_message(report.empty_masks)] if report.empty_masks else []
        raise DatasetError(summary(report.problems, report.checked, where, notes))
    if report.empty_masks:
        warnings.warn(_empty_mask_message(report.empty_masks), EmptyMaskWarning, stacklevel=2)
    return report


def summary(problems: Sequence[str], checked: int, where: str, notes: Sequence[str] = ()) -> str:
    """One message for every problem: the count and where on the first line, then the first few problems."""
    if len(problems) == 1:
        return "\n".join([f"{problems[0]}; found in {where} before anything ran.", *notes])
    head = f"{len(problems)} problems in {where} ({checked} images checked before anything ran):"
    lines = [f"  {p}" for p in problems[:SHOWN]]
    if len(problems) > SHOWN:
        lines.append(f"  … and {len(problems) - SHOWN} more")
    return "\n".join([head, *lines, *notes])


def _empty_mask_message(paths: Sequence[str]) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:3]) + (f" … and {len(paths) - 3} more" if len(paths) > 3 else "")
    return (f"{len(paths)} anomalous image(s) have an all-zero ground-truth mask and count as all-normal "
            f"pixels in the pixel metrics: {shown}. Check those masks (defect pixels must be > 0).")


def _file_samples(dataset: object) -> list | None:
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, Iterable) or isinstance(samples, (str, bytes)):
        return None
    samples = list(samples)
    if samples and not hasattr(samples[0], "image_path"):
        return None
    return samples
