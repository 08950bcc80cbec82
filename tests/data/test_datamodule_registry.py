"""Every dataset is registered under the name users type, and the directory tree it documents is the one it reads."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.registry import DATAMODULES

from .layouts import box, write_image, write_mask

NAMES = {
    "mvtec_ad": ("mvtec_ad", "MVTecAD", 15),
    "visa": ("visa", "VisA", 12),
    "mvtec_loco": ("mvtec_loco", "MVTecLOCO", 5),
    "btad": ("btad", "BTAD", 3),
    "mpdd": ("mpdd", "MPDD", 6),
    "folder": ("folder", "Folder", 0),
    "cross_dataset": ("cross_dataset", "CrossDataset", 0),
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_registered_with_tree_docstring(name):
    module, cls_name, n_categories = NAMES[name]
    cls = getattr(importlib.import_module(f"anomaly_zoo.data.{module}"), cls_name)
    assert DATAMODULES[name] is cls and issubclass(cls, AnomalyDataModule)
    assert len(cls.CATEGORIES) == n_categories == len(set(cls.CATEGORIES))


# DataModules whose docstring tree is the whole layout (VisA also needs its split file, Folder and
# cross_dataset are configurable): the tree drawn for users is built on disk and must read.
TREE_READABLE = ("mvtec_ad", "mvtec_loco", "btad", "mpdd")
_FILE = re.compile(r"^[\w.-]+\.(png|bmp|jpg|JPG)$")


def build_documented_tree(doc: str, root: Path) -> str:
    """Create the directories and example files drawn in ``doc`` under ``root``; return the first category.

    Each level of the drawing is 4 characters wide (``├── ``, ``│   ``); after a directory name come example
    file names (``000.png, 001.png, …``) up to a comment (``(…)`` or ``→ …``). Files under a
    ``ground_truth`` folder become masks with one defect box, the others random images.
    """
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "<root>/")
    base = lines[start].index("<root>/")
    stack: list[Path] = [root]
    first_category = None
    for line in lines[start + 1 :]:
        if "── " not in line:
            break
        marker = line.index("── ")
        depth = (marker - 1 - base) // 4 + 1
        name, *rest = line[marker + 3 :].split()
        if name == "…":
            continue
        assert name.endswith("/"), f"only directories are drawn as nodes: {line!r}"
        directory = stack[depth - 1] / name.rstrip("/")
        del stack[depth:]
        stack.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if depth == 1 and first_category is None:
            first_category = directory.name
        for token in rest:
            if token.startswith(("(", "→")):
                break
            token = token.rstrip(",")
            if _FILE.match(token):
                if "ground_truth" in directory.parts:
                    write_mask(directory / token, box(0))
                else:
                    write_image(directory / token)
    assert first_category is not None, "no category drawn"
    return first_category


@pytest.mark.parametrize("name", TREE_READABLE)
def test_documented_tree_is_the_layout_read(name, tmp_path):
    cls = DATAMODULES[name]
    category = build_documented_tree(cls.__doc__, tmp_path)
    dm = cls(root=tmp_path, category=category, image_size=None, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    labels = [s.label for s in dm.test_dataset.samples]
    assert len(dm.train_dataset) >= 1 and 0 in labels and 1 in labels
    anomalous = next(i for i, label in enumerate(labels) if label == 1)
    assert dm.test_dataset[anomalous]["mask"].sum() == 16  # the drawn mask reached its image


# Distinct values for the nine base arguments: a subclass that re-declares them must hand each to the base
# under its own name (keyword arguments), or two of them swap here.
BASE_ARGS = dict(image_size=24, batch_size=3, eval_batch_size=5, num_workers=0, normalization="clip",
                 interpolation="bicubic", train_augmentations=["hflip"])


@pytest.mark.parametrize("name,extra", [
    ("visa", {"category": ["candle"]}),
    ("folder", {"category": "brain", "normal_dir": "train/good"}),
    ("cifar10", {"category": "cat"}),
    ("synthetic", {"category": ["pill"]}),
])
def test_subclasses_pass_every_base_argument_through(name, extra, tmp_path):
    dm = DATAMODULES[name](root=str(tmp_path), **BASE_ARGS, **extra)
    assert dm.root == tmp_path and dm.category == extra["category"]
    assert dm.image_size == (24, 24) and (dm.batch_size, dm.eval_batch_size, dm.num_workers) == (3, 5, 0)
    assert (dm.normalization, dm.interpolation, dm.train_augmentations) == ("clip", "bicubic", ["hflip"])
