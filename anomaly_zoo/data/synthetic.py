"""The built-in ``synthetic`` dataset: procedurally generated, seeded, no download.

Generated once to disk in the MVTec AD layout and then read back like any other dataset, so the
demo and the tests exercise the real reading code. The images themselves are drawn by
:mod:`anomaly_zoo.data.synthetic_shapes` (see its docstring for what each category looks like).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.data.synthetic_shapes import CATEGORIES, DEFECTS, GENERATOR_VERSION, render, sample_rng
from anomaly_zoo.data.transforms import ImageSize
from anomaly_zoo.registry import DATAMODULES

#: Written last into a generated root; its presence means the dataset is complete.
MARKER = ".anomaly_zoo_synthetic.json"
#: split → (image directory, ground-truth directory) inside a category.
SPLIT_DIRS: dict[str, tuple[str, str | None]] = {
    "train": ("train", None),
    "val": ("validation", "ground_truth_validation"),
    "test": ("test", "ground_truth"),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated files (the cache key is a hash of it)."""

    generated_size: int = 128
    num_train: int = 48
    num_val: int = 16
    num_test: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.generated_size < 32:
            raise ValueError(f"generated_size must be at least 32 pixels, got {self.generated_size}.")
        if self.num_train < 1:
            raise ValueError(f"num_train must be at least 1, got {self.num_train}.")
        if self.num_val < 0 or self.num_test < 0:
            raise ValueError(f"num_val and num_test must be >= 0, got {self.num_val} and {self.num_test}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")

    def as_dict(self) -> dict:
        return {**asdict(self), "generator_version": GENERATOR_VERSION, "categories": list(CATEGORIES)}

    @property
    def key(self) -> str:
        """A short hash of the parameters and the generator version: the cache directory's name."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def plan(self, category: str, split: str) -> list[str]:
        """The defect kind of every image of a split, by index: normals first, then defects in turn.

        Train is all normal; validation and test are half normal (rounded up) and half anomalous,
        the anomalies cycling through the category's defect kinds.
        """
        if split == "train":
            return ["good"] * self.num_train
        total = self.num_val if split == "val" else self.num_test
        defects = DEFECTS[category]
        n_anomalous = total // 2
        return ["good"] * (total - n_anomalous) + [defects[i % len(defects)] for i in range(n_anomalous)]


def cache_dir() -> Path:
    """``$ANOMALY_ZOO_CACHE``, else ``$XDG_CACHE_HOME/anomaly_zoo``, else ``~/.cache/anomaly_zoo``."""
    if os.environ.get("ANOMALY_ZOO_CACHE"):
        return Path(os.environ["ANOMALY_ZOO_CACHE"]).expanduser()
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base.expanduser() / "anomaly_zoo"


def default_root(spec: SyntheticSpec) -> Path:
    return cache_dir() / "synthetic" / spec.key


def write_dataset(directory: Path, spec: SyntheticSpec) -> None:
    """Render every category and split of ``spec`` into ``directory`` (MVTec AD layout, see the DataModule)."""
    size = spec.generated_size
    for category in CATEGORIES:
        for split, (image_dir, gt_dir) in SPLIT_DIRS.items():
            plan = spec.plan(category, split)
            width = max(3, len(str(len(plan) - 1)))
            counters: dict[str, int] = {}
            for index, defect in enumerate(plan):
                sample = render(category, defect, size, sample_rng(spec.seed, category, split, index))
                number = counters.get(defect, 0)
                counters[defect] = number + 1
                stem = f"{number:0{width}d}"
                _save(sample.image, directory / category / image_dir / defect / f"{stem}.png")
                if defect != "good":
                    assert gt_dir is not None
                    _save(
                        sample.mask.astype(np.uint8) * 255,
                        directory / category / gt_dir / defect / f"{stem}_mask.png",
                    )


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Low zlib effort: the files are tiny and generation time matters more than bytes.
    Image.fromarray(array).save(path, compress_level=1)


def _check_marker(root: Path, spec: SyntheticSpec) -> None:
    try:
        found = json.loads((root / MARKER).read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"Cannot read the synthetic dataset marker '{root / MARKER}': {err}") from err
    wanted = spec.as_dict()
    if found != wanted:
        changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        details = ", ".join(f"{k}: {found.get(k)!r} on disk vs {wanted.get(k)!r} requested" for k in changed)
        raise DatasetError(
            f"'{root}' holds a synthetic dataset generated with other parameters ({details}). "
            "Choose another `root`, leave `root` unset to use the cache, or delete the directory."
        )


def ensure_generated(root: str | Path, spec: SyntheticSpec) -> bool:
    """Generate the dataset at ``root`` unless it is already there; ``True`` if this call generated it.

    The files are written to a sibling temporary directory that is renamed to ``root`` in one atomic
    step, so concurrent callers (DDP ranks, parallel test workers) never see a half-written dataset:
    the first rename wins and the others discard their copy.
    """
    root = Path(root).expanduser()
    if (root / MARKER).is_file():
        _check_marker(root, spec)
        return False
    if root.is_dir() and any(root.iterdir()):
        raise DatasetError(
            f"'{root}' exists and is not a synthetic dataset (no '{MARKER}'); refusing to write into it. "
            "Choose an empty or new `root`, or leave it unset to use the cache."
        )
    if root.exists() and not root.is_dir():
        raise DatasetError(f"synthetic root '{root}' is a file, not a directory (check `root`).")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_copies(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_dataset(tmp, spec)
        (tmp / MARKER).write_text(json.dumps(spec.as_dict(), indent=2, sort_keys=True) + "\n")
        if root.is_dir():
            try:
                root.rmdir()  # an empty directory the user made; rename cannot replace it everywhere
            except OSError:
                pass
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / MARKER).is_file():
                raise
            _check_marker(root, spec)  # another process finished first: use its copy
            return False
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _remove_stale_copies(root: Path, max_age_s: float = 3600.0) -> None:
    """Temporary copies left by killed processes (a live generation takes seconds, not an hour)."""
    now = time.time()
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


@DATAMODULES.register("synthetic")
class SyntheticDataModule(AnomalyDataModule):
    """Built-in procedurally generated dataset: textures and objects with realistic defects and exact masks.

    Nothing to download: the first use renders the images (a second or two for the defaults) into
    ``root`` and every later use — in any process — reads them back. The same parameters always
    give byte-identical files; another ``seed`` gives other images.

    Categories (``"all"`` = every one, in this order):

    - ``stripes``, ``grid``, ``carpet`` — textures (diagonal stripes, a wire mesh, a fibrous carpet)
      with random phase, spacing, colour and noise; defects anywhere.
    - ``pill`` — a white tablet with a score line and random red speckles, jittered in position,
      rotation, size and colour; defects on the tablet.
    - ``assembly`` — a board with four differently shaped and coloured components on solder-pad
      sockets in a fixed 2×2 layout; tests its logic as well as its surface.

    Defect kinds (folder names): ``scratch`` (thin line), ``hole`` (dark blob) and ``stain``
    (coloured blob) on the textures and the pill; ``missing_part`` and ``misplaced_part`` (logical
    anomalies: the mask covers the absent part's place, or both the place the part should be and
    where it is) plus ``scratch`` on the assembly. Validation and test splits are half normal, half
    anomalous, the anomalies cycling through the category's defect kinds.

    Layout written under ``root`` (MVTec AD's, plus a validation split with its own masks)::

        <root>/.anomaly_zoo_synthetic.json          generation parameters (the completeness marker)
        <root>/<category>/train/good/000.png
        <root>/<category>/validation/{good,<defect>}/000.png
        <root>/<category>/ground_truth_validation/<defect>/000_mask.png
        <root>/<category>/test/{good,<defect>}/000.png
        <root>/<category>/ground_truth/<defect>/000_mask.png

    Args:
        root: where the dataset lives; default ``<cache>/synthetic/<hash of the parameters>`` with
            ``<cache>`` = ``$ANOMALY_ZOO_CACHE`` or ``~/.cache/anomaly_zoo``. An existing root is reused
            if its parameters match, and refused if they do not.
        category: one category, a list, or ``"all"``.
        generated_size: side of the generated square images, in pixels (≥ 32; shapes scale with it).
        num_train: normal training images per category.
        num_val: validation images per category (half anomalous); 0 for no validation split.
        num_test: test images per category (half anomalous).
        seed: the random seed (≥ 0) of the whole dataset.
        image_size: size the images are resized to; default ``None`` keeps the generated size.
        batch_size, eval_batch_size, num_workers, normalization, interpolation, train_augmentations, cache:
            as in :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = CATEGORIES
    DATASET_NAME = "synthetic"

    def __init__(
        self,
        root: str | None = None,
        category: str | list[str] = "all",
        generated_size: int = 128,
        num_train: int = 48,
        num_val: int = 16,
        num_test: int = 32,
        seed: int = 0,
        image_size: ImageSize = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        normalization: str = "imagenet",
        interpolation: str = "bilinear",
        train_augmentations: list[str] | None = None,
        cache: str = "auto",
    ) -> None:
        spec = SyntheticSpec(generated_size, num_train, num_val, num_test, seed)
        super().__init__(
            root=default_root(spec) if root is None else root,
            category=category,
            image_size=image_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            normalization=normalization,
            interpolation=interpolation,
            train_augmentations=train_augmentations,
            cache=cache,
        )
        self.spec = spec
        #: Whether this instance rendered the files (``False`` when they were already on disk).
        self.generated = False

    def prepare_data(self) -> None:
        """Render the dataset into ``root`` if it is not there yet (safe to call from every process)."""
        self.generated = ensure_generated(self.root, self.spec) or self.generated

    def check_root(self) -> None:
        self.prepare_data()  # setup() without prepare_data() (plain Python use) still finds the data
        super().check_root()

    def available_categories(self) -> list[str]:
        return [c for c in CATEGORIES if (self.root / c).is_dir()]

    def make_samples(self, category: str, split: str) -> list[Sample]:
        image_dir, gt_dir = SPLIT_DIRS[split]
        base = self.root / category / image_dir
        if not base.is_dir():
            return []
        samples = [Sample(str(p), 0, category) for p in list_images(base / "good")]
        if gt_dir is None:
            return samples
        kinds = sorted(
            p.name for p in base.iterdir() if p.is_dir() and p.name != "good" and not p.name.startswith(".")
        )
        for kind in kinds:
            images = list_images(base / kind)
            masks = match_by_stem(
                images, list_images(self.root / category / gt_dir / kind), suffixes=("_mask",)
            )
            for image in images:
                if image not in masks:
                    raise DatasetError(
                        f"Anomalous image '{image}' has no mask: expected "
                        f"'{self.root / category / gt_dir / kind / (image.stem + '_mask.png')}'."
                    )
                samples.append(Sample(str(image), 1, category, (str(masks[image]),), kind))
        return samples
