"""Reading images and masks from disk with validation (never a silent wrong number)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_zoo.data.errors import DatasetError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension (hidden files such as ``.DS_Store`` are skipped)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(directory: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``directory`` sorted by name; non-image and hidden files are ignored."""
    if not directory.is_dir():
        return []
    pattern = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in pattern if is_image_file(p) and not _in_hidden_dir(p, directory))


def _in_hidden_dir(path: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(top).parts[:-1])


def require_dir(path: Path, what: str, option: str = "root") -> Path:
    """Fail with the option name when a dataset directory is missing."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: '{path}' does not exist or is not a directory (check `{option}`).")
    return path


def find_images(paths: str | list[str]) -> list[Path]:
    """Image files named by ``paths`` (files, folders searched recursively, globs), each once, in the given order.

    Within a folder or glob, files are sorted by name. A pattern that matches no image is an error naming it.
    """
    patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not patterns:
        raise DatasetError("`path` is empty: give image files, folders or glob patterns.")
    found: dict[str, Path] = {}
    for pattern in patterns:
        path = Path(os.path.expanduser(str(pattern)))
        if path.is_dir():
            matches = list_images(path, recursive=True)
        elif path.is_file():
            if not is_image_file(path):
                raise DatasetError(f"'{path}' is not an image file (check `path`).")
            matches = [path]
        else:
            matches = sorted(p for p in map(Path, glob.glob(str(path), recursive=True)) if is_image_file(p))
        if not matches:
            raise DatasetError(f"No image files found at '{pattern}' (check `path`: a file, a folder or a glob).")
        for match in matches:
            found.setdefault(os.path.realpath(match), match)
    return list(found.values())


def _open(path: str | Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as err:
        raise DatasetError(f"File not found: '{path}'.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"Cannot read image '{path}' (corrupt or not an image): {err}") from err
    return image


def read_image(path: str | Path) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array; grayscale, palette, 16-bit and RGBA inputs become 3-channel RGB.

    Transparent pixels are composited onto white, as image viewers and browsers show them (onto black
    they would look darker than the user sees them); opaque RGBA images keep their colours exactly.
    """
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # One fixed scale for every image (never per-image max): intensity anomalies must stay visible.
        array = np.asarray(image, dtype=np.float64).clip(0, 65535)
        array = (array / 257.0).round().astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """An (H, W) bool mask: every non-zero pixel (of any colour channel) is a defect.

    An alpha channel is ignored: an opaque RGBA/LA mask must not become all-defect.
    """
    image = _open(path)
    if image.mode in _ALPHA_MODES:
        image = image.convert("RGBA" if image.mode in ("RGBA", "RGBa", "PA") else "LA")
        array = np.asarray(image)[..., :-1]
    else:
        array = np.asarray(image)
    if array.ndim == 3:
        array = array.any(axis=2)
    return array > 0


def merge_masks(paths: Sequence[str | Path], image_path: str | Path, image_shape: tuple[int, int]) -> np.ndarray:
    """The union (logical OR) of all masks of one image, checked against the image size."""
    merged = np.zeros(image_shape, dtype=bool)
    for path in paths:
        mask = read_mask(path)
        if mask.shape != image_shape:
            raise DatasetError(
                f"Mask '{path}' has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image '{image_path}' "
                f"is {image_shape[1]}x{image_shape[0]}."
            )
        merged |= mask
    return merged


def match_by_stem(
    images: Iterable[Path], masks: Iterable[Path], suffixes: Sequence[str] = ("", "_mask")
) -> dict[Path, Path]:
    """Pair each image with the mask whose stem is the image stem plus one of ``suffixes``.

    Pairing by stem (never by sorted position) makes a missing or extra file an error, not a shift.
    """
    by_stem = {m.stem: m for m in masks}
    pairs = {}
    for image in images:
        for suffix in suffixes:
            if image.stem + suffix in by_stem:
                pairs[image] = by_stem[image.stem + suffix]
                break
    return pairs
