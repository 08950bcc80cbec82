"""``anomaly-zoo predict --ckpt_path model.onnx imgs/ 'more/*.png'``: ``predict`` with an exported model.

The same outputs as ``predict`` with the checkpoint (:mod:`anomaly_zoo.viz.outputs`: ``predictions.csv``,
``overlays/``, on request ``maps/`` and ``masks/``, under ``results/<model>/images/version_N/predictions``
unless ``--output_dir``), decided at the thresholds in the export's metadata, from the exported file alone
(:mod:`.runtime`). For ONNX nothing here imports torch or Lightning: a single image takes well under a
second on a small CPU. Differences from the checkpoint's ``predict``: images are given as paths, folders or
globs (``--data`` needs the checkpoint), and a normalised graph has no ``raw_score`` column (the graph
outputs only normalised scores).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import find_images, read_image
from anomaly_zoo.deploy_cli import BOOLEANS
from anomaly_zoo.export.runtime import ExportedModel, ExportedModelError
from anomaly_zoo.viz.outputs import (
    auto_value_range,
    globally_decided_note,
    map_percentiles,
    output_names,
    write_image_outputs,
    write_predictions_csv,
)

__all__ = ["main", "predict_exported"]


class _OneLineParser(argparse.ArgumentParser):
    """Bad options end in one ``error:`` line (the project's rule), not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments" in message:
            message += (" (an exported model predicts image files given as paths, folders or globs, or "
                        "--data folder --data.root DIR; other --data options and the Lightning options need the "
                        "checkpoint: --ckpt_path model.ckpt)")
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _bool(value: str) -> bool:
    if value.lower() not in BOOLEANS:
        raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")
    return BOOLEANS[value.lower()]


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="anomaly-zoo predict", description="Predict images with a model written by `anomaly-zoo export`.",
        allow_abbrev=False)
    parser.add_argument("paths", nargs="*", help="image files, folders (searched recursively) or glob patterns")
    # The checkpoint route's spellings of the same thing: `--data folder --data.root DIR`, `--data images
    # --data.path P...` (a folder's labelled splits need the checkpoint: Folder is a Lightning DataModule).
    parser.add_argument("--data", choices=("images", "folder"), default=None,
                        help="images (with --data.path) or folder (with --data.root): the same as giving paths")
    parser.add_argument("--data.root", "--data.init_args.root", dest="data_root", default=None)
    parser.add_argument("--data.path", "--data.init_args.path", dest="data_path", nargs="+", default=None)
    parser.add_argument("--ckpt_path", required=True, help="the exported .onnx (or TorchScript .pt) file")
    parser.add_argument("--category", "--data.category", default="images", dest="category",
                        help="the images' category (picks its own thresholds when the model has them)")
    parser.add_argument("--output_dir", default=None, help="default: results/<model>/images/version_N/predictions")
    parser.add_argument("--results_dir", default="results", help="root of the default output folder")
    parser.add_argument("--batch_size", "--data.batch_size", type=int, default=8, dest="batch_size",
                        help="images per run of the model (a fixed-batch export gets padded batches)")
    flags = {"--save_maps": "also write maps/<name>.npy (the map at native size)",
             "--save_masks": "also write masks/<name>.png (the region at the pixel threshold)",
             "--heatmaps": "write overlays/<name>.png (default true)"}
    for flag, text in flags.items():
        parser.add_argument(flag, type=_bool, nargs="?", const=True, default=flag == "--heatmaps", metavar="BOOL",
                            help=text)
    return parser


def _split_flags(argv: list[str]) -> list[str]:
    """``--save_maps imgs/`` would make ``imgs/`` the flag's value: a flag takes only a true/false word."""
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        if token in ("--save_maps", "--save_masks", "--heatmaps") and (
                i + 1 >= len(argv) or argv[i + 1].lower() not in BOOLEANS):
            out[-1] = f"{token}=true"
    return out


def main(argv: Sequence[str]) -> int:
    """``argv`` without the leading ``predict``."""
    parser = build_parser()
    args = parser.parse_args(_split_flags(list(argv)))
    paths = list(args.paths) + ([args.data_root] if args.data_root else []) + list(args.data_path or [])
    if not paths:
        parser.error("give the images as paths, folders or globs (or --data folder --data.root DIR)")
    if (args.data_root and args.data != "folder") or (args.data_path and args.data != "images"):
        parser.error("--data.root goes with --data folder, --data.path with --data images")
    if args.batch_size < 1:
        sys.stderr.write(f"error: --batch_size must be >= 1, got {args.batch_size}.\n")
        return 2
    try:
        model = ExportedModel.load(args.ckpt_path)
        target = predict_exported(model, paths, output_dir=args.output_dir, results_dir=args.results_dir,
                                  category=args.category, batch_size=args.batch_size, heatmaps=args.heatmaps,
                                  save_maps=args.save_maps, save_masks=args.save_masks)
    except (ExportedModelError, DatasetError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    print(f"Predictions written to {target}" + (" (+ overlays/)" if args.heatmaps else ""))
    own = model.categories_with_own_thresholds()
    if own and args.category not in own:
        print(globally_decided_note([args.category], own, "--category"))
    return 0


def default_output_dir(results_dir: str | Path, model_name: str) -> Path:
    """``<results_dir>/<model>/images/version_N/predictions`` with the next free N (the checkpoint's layout)."""
    base = Path(results_dir) / model_name / "images"
    taken = [int(p.name.removeprefix("version_")) for p in base.glob("version_*")
             if p.name.removeprefix("version_").isdigit()]
    return base / f"version_{max(taken, default=-1) + 1}" / "predictions"


def predict_exported(model: ExportedModel, paths: Sequence[str], output_dir: str | Path | None = None,
                     results_dir: str | Path = "results", category: str = "images", batch_size: int = 8,
                     heatmaps: bool = True, save_maps: bool = False, save_masks: bool = False) -> Path:
    """Score every image of ``paths`` once and write the outputs; returns the ``predictions.csv`` path."""
    files = [str(p) for p in find_images(list(paths))]
    out = Path(output_dir) if output_dir else default_output_dir(results_dir, model.model_name)
    names = output_names(files)
    thresholds = model.decision_thresholds(category)
    pixel_threshold = thresholds[1] if thresholds else None
    value_range = model.value_range()
    deferred: list[tuple[str, np.ndarray]] = []  # (path, map): written once the run's colour range is known
    percentiles: list[tuple[float, float]] = []
    rows: list[dict[str, Any]] = []
    coverage = float(model.metadata.get("map_coverage", 1.0))
    for start in _progress(range(0, len(files), batch_size)):
        chunk = files[start:start + batch_size]
        images = [read_image(p) for p in chunk]
        maps, scores = model(np.stack([model.preprocess(image) for image in images]))
        for path, image, anomaly_map, score in zip(chunk, images, maps, scores):
            rows.append({"path": path, "category": category, "label": "", "pred_score": float(score),
                         "pred_label": int(score >= thresholds[0]) if thresholds else "",
                         "overlay": f"overlays/{names[path]}.png" if heatmaps else ""})
            if value_range is None and heatmaps:
                percentiles.append(map_percentiles(anomaly_map))
                deferred.append((path, anomaly_map))
            else:
                write_image_outputs(out, names[path], image, anomaly_map, coverage, value_range, pixel_threshold,
                                    None, heatmaps, save_maps, save_masks)
    if deferred:
        value_range = auto_value_range(percentiles)
        for path, anomaly_map in deferred:
            write_image_outputs(out, names[path], read_image(path), anomaly_map, coverage, value_range,
                                pixel_threshold, None, heatmaps, save_maps, save_masks)
    if save_masks and thresholds is None:
        print("No thresholds in this export's metadata: no binary masks written (fit calibrates them).")
    return write_predictions_csv(out, rows)


def _progress(batches: range):
    """A progress bar over the batches when there are several (tqdm hides itself when stderr is no terminal)."""
    if len(batches) <= 1:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc="Predicting", unit="batch", total=len(batches), disable=None)
