"""``images``: any image files to predict on — a file, a folder (searched recursively), a glob, or a list of them.

No labels (``label`` = -1, written as an empty cell by ``predict``), no masks, predict only. Every image is
predicted once, even if two patterns match it. ``anomaly-zoo predict --ckpt_path model.ckpt imgs/`` is the
short form of ``--data images --data.path imgs/`` (see ``anomaly_zoo/predict_cli.py``).
"""

from __future__ import annotations

import os
from typing import Any

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import find_images
from anomaly_zoo.data.transforms import ImageSize
from anomaly_zoo.registry import DATAMODULES

__all__ = ["ImageFiles", "find_images", "folder_predict_samples"]

#: The label of an image nobody has labelled.
UNKNOWN_LABEL = -1
#: The category of images given without ``--data.category``: unknown (a model that names categories, such as
#: MoECLIP's text prompts, uses its generic name for it).
UNNAMED_CATEGORY = "images"
#: ``--data folder``'s default category, likewise a name nobody chose.
FOLDER_CATEGORY = "folder"
UNNAMED_CATEGORIES = frozenset({UNNAMED_CATEGORY, FOLDER_CATEGORY})


def folder_predict_samples(folder: Any, category: str) -> list[Sample]:
    """What ``predict`` scores on a :class:`~anomaly_zoo.data.folder.Folder`: every image it names, once.

    With none of ``normal_dir`` / ``normal_test_dir`` / ``abnormal_dir`` set: every image under ``root``
    (recursively), label unknown. Otherwise all images of those directories — the whole ``normal_dir``, not
    the seeded test fraction — labelled as their directory says, anomalous ones with their masks.
    """
    if folder.normal_dir is None and folder.normal_test_dir is None and folder.abnormal_dir is None:
        return [Sample(str(p), UNKNOWN_LABEL, category, (), "unknown") for p in find_images(str(folder.root))]
    samples = folder.make_samples(category, "train") if folder.normal_dir is not None else []
    samples += folder.make_samples(category, "test")
    unique: dict[str, Sample] = {}
    for sample in samples:
        unique.setdefault(os.path.realpath(sample.image_path), sample)
    return list(unique.values())


@DATAMODULES.register("images")
class ImageFiles(AnomalyDataModule):
    """Unlabelled images for ``predict``: files, folders (recursive) or globs.

    Args:
        path: one path / glob or a list of them.
        category: the name the images carry in ``predictions.csv``.
        image_size: the model's input size; the CLI fills it in from ``--ckpt_path`` when not given.
        batch_size, num_workers, normalization, interpolation: as in :class:`AnomalyDataModule` (the CLI
            takes normalisation and interpolation from the checkpoint too).
    """

    DATASET_NAME = "images"

    def __init__(
        self,
        path: str | list[str],
        category: str = UNNAMED_CATEGORY,
        image_size: ImageSize = None,
        batch_size: int = 8,
        num_workers: int = 0,
        normalization: str = "imagenet",
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__(root=".", category=category, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, normalization=normalization, interpolation=interpolation)
        self.path = path

    def check_root(self) -> None:
        """There is no root: the paths are checked when they are listed."""

    def available_categories(self) -> list[str]:
        return [self.category]

    def resolve_categories(self) -> list[str]:
        return [self.category]

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split != "test":
            return []
        return [Sample(str(p), UNKNOWN_LABEL, category, (), "unknown") for p in find_images(self.path)]

    def setup(self, stage: str | None = None) -> None:
        if stage not in (None, "predict"):
            raise DatasetError(
                f"`--data images` holds unlabelled images for `predict` only, not `{stage}`: train and test on a "
                "labelled dataset (e.g. `--data folder`)."
            )
        super().setup("predict")
