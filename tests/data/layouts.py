"""Tiny fake copies of each dataset in its publisher's layout (16×16 images), written into a temp dir.

Every writer returns the dataset root and is deterministic. Masks are boxes whose position depends
on the image index, so tests can check that the right mask reached the right image.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16  # images are SIZE × SIZE


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (SIZE, SIZE), seed: int = 0) -> Path:
    """A random image (h, w) = ``size`` in PIL ``mode``: RGB, L, RGBA, I;16 (16-bit grayscale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    if mode == "RGB":
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif mode == "RGBA":
        array = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        array[..., 3] = 255
        image = Image.fromarray(array)
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        raise ValueError(mode)
    image.save(path)
    return path


def box(index: int, size: tuple[int, int] = (SIZE, SIZE)) -> tuple[slice, slice]:
    """The defect box of image ``index``: 4×4 pixels, shifted with the index."""
    r = (2 * index) % (size[0] - 4)
    c = (3 * index) % (size[1] - 4)
    return slice(r, r + 4), slice(c, c + 4)


def write_mask(
    path: Path,
    region: tuple[slice, slice] | np.ndarray,
    value: int = 255,
    size: tuple[int, int] = (SIZE, SIZE),
) -> Path:
    """A single-channel mask with ``value`` inside ``region`` (slices or a bool array) and 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros(size, dtype=np.uint8)
    array[region] = value
    Image.fromarray(array).save(path)
    return path


def expected_mask(index: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    mask[box(index, size)] = 1
    return mask


# ---- MVTec AD / MPDD -------------------------------------------------------------------------------
MVTEC_DEFECTS = {"crack": 2, "hole": 1}


def make_mvtec(
    root: Path,
    categories: tuple[str, ...] = ("bottle", "cable"),
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    mask_suffix: str = "_mask",
    image_ext: str = ".png",
    mask_ext: str = ".png",
    normal: str = "good",
    anomalous_dir: str | None = None,
) -> Path:
    """MVTec AD layout: ``<cat>/train/good``, ``test/{good,<defect>}``, ``ground_truth/<defect>/<stem>_mask.png``.

    With ``anomalous_dir`` (BTAD's ``ko``) every anomalous image goes there instead of per-defect folders.
    """
    defects = MVTEC_DEFECTS if defects is None else defects
    if anomalous_dir is not None:
        defects = {anomalous_dir: sum(defects.values())}
    for c, category in enumerate(categories):
        base = root / category
        for i in range(n_train):
            write_image(base / "train" / normal / f"{i:03d}{image_ext}", seed=100 * c + i)
        for i in range(n_good):
            write_image(base / "test" / normal / f"{i:03d}{image_ext}", seed=1000 + 100 * c + i)
        for defect, count in defects.items():
            for i in range(count):
                write_image(base / "test" / defect / f"{i:03d}{image_ext}", seed=2000 + 100 * c + i)
                write_mask(base / "ground_truth" / defect / f"{i:03d}{mask_suffix}{mask_ext}", box(i))
    return root


def make_btad(root: Path, n_train: int = 3, n_ok: int = 2, n_ko: int = 2) -> Path:
    """Raw BTAD: 01 = .bmp images + .png masks; 02 = .png + .png; 03 = .bmp + .bmp; ok/ko, no mask suffix."""
    for category, (image_ext, mask_ext) in {
        "01": (".bmp", ".png"),
        "02": (".png", ".png"),
        "03": (".bmp", ".bmp"),
    }.items():
        make_mvtec(
            root,
            (category,),
            n_train,
            n_ok,
            {"ko": n_ko},
            "",
            image_ext,
            mask_ext,
            normal="ok",
            anomalous_dir="ko",
        )
    return root


# ---- VisA ------------------------------------------------------------------------------------------
def make_visa(
    root: Path,
    categories: tuple[str, ...] = ("candle", "pcb1"),
    n_train: int = 3,
    n_normal_test: int = 2,
    n_anomaly: int = 2,
    mask_value: int = 1,
) -> Path:
    """Raw VisA: ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, ``Data/Masks/Anomaly/*.png``, ``split_csv/1cls.csv``.

    Images are real JPEGs. Masks store ``mask_value`` inside the defect (default 1, not 255) so the
    binarisation ``> 0`` is exercised.
    """
    rows = []
    for category in categories:
        data = root / category / "Data"
        for i in range(n_train + n_normal_test):
            path = data / "Images" / "Normal" / f"{i:04d}.JPG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((SIZE, SIZE, 3), 40 + 10 * i, np.uint8)).save(path, format="JPEG")
            split = "train" if i < n_train else "test"
            rows.append([category, split, "normal", path.relative_to(root).as_posix(), ""])
        for i in range(n_anomaly):
            path = data / "Images" / "Anomaly" / f"{i:03d}.JPG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((SIZE, SIZE, 3), 200, np.uint8)).save(path, format="JPEG")
            mask = write_mask(data / "Masks" / "Anomaly" / f"{i:03d}.png", box(i), value=mask_value)
            rows.append(
                [
                    category,
                    "test",
                    "anomaly",
                    path.relative_to(root).as_posix(),
                    mask.relative_to(root).as_posix(),
                ]
            )
    split_csv = root / "split_csv" / "1cls.csv"
    split_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(split_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


# ---- MVTec LOCO ------------------------------------------------------------------------------------
LOCO_DEFECTS = ("logical_anomalies", "structural_anomalies")


def make_loco(
    root: Path,
    categories: tuple[str, ...] = ("breakfast_box", "pushpins"),
    n_train: int = 3,
    n_val: int = 2,
    n_good: int = 2,
    n_anomalous: int = 2,
) -> Path:
    """MVTec LOCO: ``train/good``, ``validation/good``, ``test/{good,logical_anomalies,structural_anomalies}``,
    ``ground_truth/<defect>/<stem>/000.png, 001.png`` — image ``i`` has ``i + 1`` masks (boxes ``0 … i``).
    """
    for c, category in enumerate(categories):
        base = root / category
        for i in range(n_train):
            write_image(base / "train" / "good" / f"{i:03d}.png", seed=100 * c + i)
        for i in range(n_val):
            write_image(base / "validation" / "good" / f"{i:03d}.png", seed=500 + 100 * c + i)
        for i in range(n_good):
            write_image(base / "test" / "good" / f"{i:03d}.png", seed=1000 + 100 * c + i)
        for defect in LOCO_DEFECTS:
            for i in range(n_anomalous):
                write_image(base / "test" / defect / f"{i:03d}.png", seed=2000 + 100 * c + i)
                for k in range(i + 1):
                    write_mask(base / "ground_truth" / defect / f"{i:03d}" / f"{k:03d}.png", box(3 * k))
    return root


def loco_union(index: int) -> np.ndarray:
    """The merged mask of LOCO test image ``index``: the union of its ``index + 1`` boxes."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for k in range(index + 1):
        mask[box(3 * k)] = 1
    return mask


# ---- Folder ----------------------------------------------------------------------------------------
def make_folder(root: Path, n_normal: int = 10, n_normal_test: int = 2, n_abnormal: int = 3) -> Path:
    """A medical-style folder set: ``train/good``, ``test/good``, ``test/Ungood/img``, ``test/Ungood/label``."""
    for i in range(n_normal):
        write_image(root / "train" / "good" / f"n{i:03d}.png", mode="L", seed=i)
    for i in range(n_normal_test):
        write_image(root / "test" / "good" / f"t{i:03d}.png", mode="L", seed=100 + i)
    for i in range(n_abnormal):
        write_image(root / "test" / "Ungood" / "img" / f"a{i:03d}.png", mode="L", seed=200 + i)
        suffix = "_mask" if i % 2 else ""
        write_mask(root / "test" / "Ungood" / "label" / f"a{i:03d}{suffix}.png", box(i))
    return root


# ---- helpers ---------------------------------------------------------------------------------------
def one_batch(dataset, batch_size: int = 64) -> dict:
    """All items of a (small) dataset in one batch, through a real DataLoader with default collate."""
    from torch.utils.data import DataLoader

    return next(iter(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)))


def stem_index(path: str) -> int:
    """``…/003.png`` or ``…/a003.png`` → 3."""
    return int("".join(ch for ch in Path(path).stem if ch.isdigit()))


# ---- MVTec LOCO with defects_config.json (sPRO) ---------------------------------------------------------
#: (defect_name, pixel_value, saturation_threshold, relative_saturation) of the fake categories; mask ``k``
#: of an image stores the pixel value of entry ``k % 3``.
LOCO_DEFECT_CONFIG = (
    ("missing_part", 255, 1.0, True),
    ("extra_part", 254, 5, False),
    ("wrong_colour", 253, 0.5, True),
)


def make_loco_with_config(root: Path, **kwargs) -> Path:
    """:func:`make_loco` plus ``<cat>/defects_config.json``; mask ``k`` stores pixel value of entry ``k % 3``."""
    import json

    make_loco(root, **kwargs)
    entries = [
        {"defect_name": n, "pixel_value": v, "saturation_threshold": t, "relative_saturation": r}
        for n, v, t, r in LOCO_DEFECT_CONFIG
    ]
    for category in [p for p in root.iterdir() if (p / "ground_truth").is_dir()]:
        (category / "defects_config.json").write_text(json.dumps(entries))
        for mask in sorted((category / "ground_truth").rglob("*.png")):
            k = int(mask.stem)
            write_mask(mask, box(3 * k), value=LOCO_DEFECT_CONFIG[k % 3][1])
    return root
