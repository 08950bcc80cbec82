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


# ---- MVTec AD 2 ------------------------------------------------------------------------------------
def make_mvtec_ad2(root: Path, categories: tuple[str, ...] = ("can", "vial"), n: int = 2) -> Path:
    """``train/good``, ``validation/good``, ``test_public/{good,bad,ground_truth/bad/<stem>_mask.png}``,
    ``test_private/``, ``test_private_mixed/`` with MVTec AD 2 file names (``000_regular.png``)."""
    for c, category in enumerate(categories):
        base = root / category
        for i in range(n):
            write_image(base / "train" / "good" / f"{i:03d}_regular.png", seed=10 * c + i)
            write_image(base / "validation" / "good" / f"{i:03d}_regular.png", seed=200 + i)
            write_image(base / "test_public" / "good" / f"{i:03d}_regular.png", seed=300 + i)
            write_image(base / "test_public" / "bad" / f"{i:03d}_regular.png", seed=400 + i)
            write_mask(base / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", box(i))
            write_image(base / "test_private" / f"{i:03d}_regular.png", seed=500 + i)
            write_image(base / "test_private_mixed" / f"{i:03d}_overexposed.png", seed=600 + i)
    (root / "readme.txt").write_text("MVTec AD 2")
    return root


# ---- MVTec 3D-AD -----------------------------------------------------------------------------------
def write_xyz(path: Path, size: tuple[int, int] = (SIZE, SIZE), seed: int = 0) -> Path:
    """A float32 (H, W, 3) point-map TIFF; the first row has no points (zeros), as at the sensor's edge."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    xyz = np.random.default_rng(seed).uniform(-1, 1, (*size, 3)).astype(np.float32)
    xyz[0] = 0.0
    tifffile.imwrite(path, xyz, photometric="rgb")  # 3 float samples per pixel, as the release
    return path


def make_mvtec_3d(
    root: Path, categories: tuple[str, ...] = ("bagel",), n: int = 2, defects=("crack",)
) -> Path:
    """``<split>/<defect>/{rgb/000.png, xyz/000.tiff, gt/000.png}``; good test images have all-zero gt."""
    for category in categories:
        base = root / category
        folders = [("train", "good"), ("validation", "good"), ("test", "good")] + [
            ("test", d) for d in defects
        ]
        for s, (split, defect) in enumerate(folders):
            for i in range(n):
                write_image(base / split / defect / "rgb" / f"{i:03d}.png", seed=100 * s + i)
                write_xyz(base / split / defect / "xyz" / f"{i:03d}.tiff", seed=100 * s + i)
                if split == "test":
                    region = box(i) if defect != "good" else np.zeros((SIZE, SIZE), bool)
                    write_mask(base / split / defect / "gt" / f"{i:03d}.png", region)
        (base / "calibration").mkdir(parents=True, exist_ok=True)
        (base / "calibration" / "camera_parameters.json").write_text("{}")
    return root


# ---- Real-IAD --------------------------------------------------------------------------------------
def make_real_iad(
    root: Path, categories: tuple[str, ...] = ("audiojack",), n_samples: int = 2, views: int = 2
) -> Path:
    """``realiad_256/<cat>/{OK,NG/AK}/S000k/<cat>_000k_<OK|NG>_C<v>_20230922093032.jpg`` (+ ``.png`` masks for
    NG), with ``realiad_jsons/realiad_jsons/<cat>.json`` (all views) and ``…_sv/<cat>.json`` (view C1 only).
    Samples 0, 1 are normal (0 in train, 1 in test), the others NG in test; the last NG view has no mask."""
    import json

    for category in categories:
        base = root / "realiad_256" / category
        multi: dict[str, list] = {"train": [], "test": []}
        for s in range(n_samples + 1):
            for v in range(1, views + 1):
                normal = s < 2
                kind = "OK" if normal else "NG"
                rel = f"{kind}/S{s:04d}" if normal else f"NG/AK/S{s:04d}"
                stem = f"{category}_{s:04d}_{kind}_C{v}_20230922093032"
                write_image(base / rel / f"{stem}.jpg", seed=10 * s + v)
                mask = None
                if not normal and v < views:
                    mask = f"{rel}/{stem}.png"
                    write_mask(base / mask, box(s + v))
                entry = {"category": "AK" if not normal else "OK", "anomaly_class": "AK" if not normal else "OK",
                         "image_path": f"{rel}/{stem}.jpg", "mask_path": mask}  # fmt: skip
                multi["train" if s == 0 else "test"].append(entry)
        for folder, keep in (
            ("realiad_jsons", lambda e: True),
            ("realiad_jsons_sv", lambda e: "_C1_" in e["image_path"]),
        ):
            doc = {"meta": {"prefix": f"{category}/", "normal_class": "OK"}}
            doc.update({k: [e for e in v if keep(e)] for k, v in multi.items()})
            path = root / "realiad_jsons" / folder / f"{category}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))
    return root


# ---- BMAD ------------------------------------------------------------------------------------------
def make_bmad(
    root: Path,
    sets: tuple[str, ...] = ("Brain", "RESC"),
    n: int = 2,
    mask_dir: str = "label",
    train: bool = True,
) -> Path:
    """``<set>/{train/good/img, valid|test/{good/img, Ungood/img, Ungood/label}}`` with BMAD names ``00002_60.png``."""
    for k, name in enumerate(sets):
        base = root / name
        for i in range(n + 1 if train else 0):
            write_image(base / "train" / "good" / "img" / f"{i:05d}_60.png", mode="L", seed=k * 10 + i)
        for split in ("valid", "test"):
            for i in range(n):
                write_image(base / split / "good" / "img" / f"{i:05d}_96.png", mode="L", seed=50 + i)
                write_image(base / split / "Ungood" / "img" / f"{i:05d}_70.png", mode="L", seed=70 + i)
                write_mask(base / split / "Ungood" / mask_dir / f"{i:05d}_70.png", box(i))
    return root


# ---- polyp sets, ISIC, RSDD: images + thresholded masks --------------------------------------------------
def write_noisy_mask(path: Path, index: int, fmt: str | None = None) -> Path:
    """A mask with 255 inside ``box(index)`` and faint noise (values 1..60) elsewhere, as JPEG/anti-aliased
    masks have; ``> 127`` recovers the box, ``> 0`` would not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (np.random.default_rng(index).integers(0, 61, (SIZE, SIZE))).astype(np.uint8)
    array[box(index)] = 255
    Image.fromarray(array).save(path, format=fmt)
    return path


def make_polyp(root: Path) -> Path:
    """PraNet copies (``CVC-ColonDB/images/1.png`` + ``masks/1.png``), Kvasir-SEG (``.jpg`` images and masks)
    and the original CVC-ClinicDB (``Original/1.tif`` + ``Ground Truth/1.tif``)."""
    for i in (1, 2, 3):
        write_image(root / "CVC-ColonDB" / "images" / f"{i}.png", seed=i)
        write_noisy_mask(root / "CVC-ColonDB" / "masks" / f"{i}.png", i)
        write_image(root / "CVC-ClinicDB" / "Original" / f"{i}.tif", seed=10 + i)
        write_noisy_mask(root / "CVC-ClinicDB" / "Ground Truth" / f"{i}.tif", i)
    for i, name in enumerate(("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4")):
        path = root / "Kvasir-SEG" / "images" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIZE, SIZE, 3), 120, np.uint8)).save(path, format="JPEG")
        write_noisy_mask(root / "Kvasir-SEG" / "masks" / f"{name}.jpg", i, fmt="PNG")  # values kept exact
    return root


def make_isic(root: Path, n: int = 3) -> Path:
    """``ISBI2016_ISIC_Part1_Test_Data/ISIC_000000k.jpg`` + ``…_Test_GroundTruth/ISIC_000000k_Segmentation.png``."""
    for i in range(n):
        path = root / "ISBI2016_ISIC_Part1_Test_Data" / f"ISIC_{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(path, format="JPEG")
        write_noisy_mask(root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"ISIC_{i:07d}_Segmentation.png", i)
    return root


def make_rsdd(root: Path, n: int = 2) -> Path:
    """``Type-I RSDDs dataset/{Rail surface images,GroundTruth}/rail_k.jpg`` and the same for Type-II."""
    for folder in ("Type-I RSDDs dataset", "Type-II RSDDs dataset"):
        for i in range(1, n + 1):
            path = root / folder / "Rail surface images" / f"rail_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((SIZE, SIZE, 3), 60, np.uint8)).save(path, format="JPEG")
            write_noisy_mask(root / folder / "GroundTruth" / f"rail_{i}.jpg", i, fmt="PNG")
    return root


# ---- image-level medical sets ----------------------------------------------------------------------------
def make_headct(root: Path, labels: tuple[int, ...] = (0, 1, 1, 0, 1)) -> Path:
    """``labels.csv`` ("id, hemorrhage", unpadded ids) and ``head_ct/head_ct/000.png …``."""
    for i in range(len(labels)):
        write_image(root / "head_ct" / "head_ct" / f"{i:03d}.png", mode="L", seed=i)
    rows = "\n".join(f"{i},{v}" for i, v in enumerate(labels))
    (root / "labels.csv").write_text(f"id, hemorrhage\n{rows}\n")
    return root


def make_yes_no(root: Path, yes: tuple[str, ...], no: tuple[str, ...], nested: str | None = None) -> Path:
    """``[nested/]yes/<names>`` (anomalous) and ``no/<names>`` (normal), RGB images."""
    base = root / nested if nested else root
    for k, name in enumerate(yes):
        write_image(base / "yes" / name, seed=k)
    for k, name in enumerate(no):
        write_image(base / "no" / name, seed=100 + k)
    return root


# ---- UCSD Ped2 -------------------------------------------------------------------------------------
def make_ped2(root: Path, n_train: int = 2, n_test: int = 2, frames: int = 3) -> Path:
    """``Train/TrainNNN/001.tif``, ``Test/TestNNN/001.tif`` + ``Test/TestNNN_gt/001.bmp``; in test clip ``c``
    frames ``>= 2`` are anomalous (box), and a macOS ``._001.tif`` sits in every clip."""
    for c in range(1, n_train + 1):
        for f in range(1, frames + 1):
            write_image(root / "Train" / f"Train{c:03d}" / f"{f:03d}.tif", mode="L", seed=c * 10 + f)
        (root / "Train" / f"Train{c:03d}" / "._001.tif").write_bytes(b"\x00\x05\x16\x07")
    for c in range(1, n_test + 1):
        for f in range(1, frames + 1):
            write_image(root / "Test" / f"Test{c:03d}" / f"{f:03d}.tif", mode="L", seed=100 + c * 10 + f)
            region = box(f) if f >= 2 else np.zeros((SIZE, SIZE), bool)
            path = root / "Test" / f"Test{c:03d}_gt" / f"{f:03d}.bmp"
            path.parent.mkdir(parents=True, exist_ok=True)
            array = np.zeros((SIZE, SIZE), np.uint8)
            array[region] = 255
            Image.fromarray(array).save(path, format="BMP")
        (root / "Test" / f"Test{c:03d}" / "._001.tif").write_bytes(b"\x00\x05\x16\x07")
    return root


def write_cifar_batch(path: Path, labels: list[int], seed: int) -> None:
    """One batch file of the CIFAR-10 python archive; the red plane of each image is ``20 * class``."""
    import pickle

    rng = np.random.default_rng(seed)
    data = np.empty((len(labels), 3072), dtype=np.uint8)
    for i, label in enumerate(labels):
        data[i] = rng.integers(0, 256, 3072, dtype=np.uint8)
        data[i, :1024] = label * 20
    entry = {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def make_cifar10(root: Path, per_class_train: int = 3, per_class_test: int = 4) -> Path:
    """``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch}``, ``per_class_*`` images of each class."""
    archive = root / "cifar-10-batches-py"
    archive.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        write_cifar_batch(archive / f"data_batch_{i}", [c for c in range(10) for _ in range(per_class_train)], i)
    write_cifar_batch(archive / "test_batch", [c for _ in range(per_class_test) for c in range(10)], 99)
    return root
