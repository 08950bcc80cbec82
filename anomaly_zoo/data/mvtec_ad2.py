"""MVTec AD 2, read as the publisher ships it: a public test split with masks, two private ones without."""

from __future__ import annotations

from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.data.layout import missing_mask_error, require_images
from anomaly_zoo.data.transforms import ImageSize
from anomaly_zoo.registry import DATAMODULES

TEST_SPLITS = ("test_public", "test_private", "test_private_mixed")


@DATAMODULES.register("mvtec_ad2")
class MVTecAD2(AnomalyDataModule):
    """MVTec AD 2 (Heckler-Kram et al., arXiv 2503.21622, 2025), read from the extracted archives.

    Layout (the archive's ``readme.txt`` and the paper, Sec. 3)::

        <root>/
        ├── can/
        │   ├── train/good/                 000_regular.png, …
        │   ├── validation/good/            000_regular.png, …     → split "val" (normal only)
        │   ├── test_public/
        │   │   ├── good/                   000_regular.png, …
        │   │   ├── bad/                    000_regular.png, …
        │   │   └── ground_truth/bad/       000_regular_mask.png, …
        │   ├── test_private/               000_regular.png, …     (no ground truth, no labels)
        │   └── test_private_mixed/         000_overexposed.png, … (lighting changes; no ground truth)
        ├── fabric/ fruit_jelly/ rice/ sheet_metal/ vial/ wallplugs/ walnuts/
        ├── license.txt
        └── readme.txt

    ``test_split`` picks the test images. Only ``test_public`` has labels and masks (``<stem>_mask.png``
    in ``test_public/ground_truth/bad/``, matched by stem); the private splits are scored on the MVTec
    benchmark server, so ``predict`` runs on them (label -1 = unknown) and ``test`` refuses with the fix.

    Args:
        test_split: ``"test_public"`` (default), ``"test_private"`` or ``"test_private_mixed"``.
        others: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
    DATASET_NAME = "MVTec AD 2"
    DOMAIN = "industrial"

    def __init__(
        self,
        root: str | Path,
        category: str | list[str] = "all",
        image_size: ImageSize = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        normalization: str = "imagenet",
        interpolation: str = "bilinear",
        train_augmentations: list[str] | None = None,
        cache: str = "auto",
        test_split: str = "test_public",
    ) -> None:
        if test_split not in TEST_SPLITS:
            raise DatasetError(
                f"MVTec AD 2 `test_split` must be one of {list(TEST_SPLITS)}, got {test_split!r}."
            )
        super().__init__(
            root=root,
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
        self.test_split = test_split

    def _looks_like_category(self, name: str) -> bool:
        return (self.root / name / "train").is_dir() or (self.root / name / "test_public").is_dir()

    def setup(self, stage: str | None = None) -> None:
        if stage == "test" and self.test_split != "test_public":
            raise DatasetError(
                f"MVTec AD 2 '{self.test_split}' ships without ground truth, so it cannot be tested locally: "
                "run `predict` on it (and submit the maps to the MVTec benchmark server), or test on "
                "`--data.test_split test_public`."
            )
        super().setup(stage)

    def make_samples(self, category: str, split: str) -> list[Sample]:
        base = self.root / category
        if split in ("train", "val"):
            directory = base / ("train" if split == "train" else "validation") / "good"
            if split == "val" and not directory.is_dir():
                return []
            images = require_images(list_images(directory), directory, f"{split} images for '{category}'")
            return [Sample(str(p), 0, category, (), "good") for p in images]
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        if self.test_split != "test_public":
            directory = base / self.test_split
            images = require_images(
                list_images(directory), directory, f"{self.test_split} images for '{category}'"
            )
            return [Sample(str(p), -1, category, (), "unlabelled") for p in images]
        test = base / "test_public"
        samples = [Sample(str(p), 0, category, (), "good") for p in list_images(test / "good")]
        bad = list_images(test / "bad")
        pairs = match_by_stem(bad, list_images(test / "ground_truth" / "bad"), ("_mask",))
        missing = [(p, test / "ground_truth" / "bad" / f"{p.stem}_mask.png") for p in bad if p not in pairs]
        if missing:
            raise missing_mask_error(
                missing, "Each test_public/bad/<stem>.png needs ground_truth/bad/<stem>_mask.png."
            )
        samples += [Sample(str(p), 1, category, (str(pairs[p]),), "bad") for p in bad]
        require_images([Path(s.image_path) for s in samples], test, f"test_public images for '{category}'")
        return samples
