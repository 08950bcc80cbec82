"""ISIC 2016 skin-lesion segmentation (ISBI 2016 challenge, part 1), read as the challenge ships it."""

from __future__ import annotations

from collections.abc import Sequence

from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.io import list_images
from anomaly_zoo.data.layout import missing_mask_error, require_images
from anomaly_zoo.data.mask_threshold import ThresholdMaskDataset
from anomaly_zoo.data.single_set import SingleSetDataModule
from anomaly_zoo.registry import DATAMODULES

_SPLITS = {"train": "Training", "test": "Test"}


@DATAMODULES.register("isic")
class ISIC(SingleSetDataModule):
    """ISIC 2016 part 1 (Gutman et al., arXiv 1605.01397), the challenge's zip files extracted into ``root``.

    Layout (ISIC 2016 challenge downloads)::

        <root>/
        ├── ISBI2016_ISIC_Part1_Test_Data/            ISIC_0000003.jpg, …   (379 images)
        ├── ISBI2016_ISIC_Part1_Test_GroundTruth/     ISIC_0000003_Segmentation.png, …
        ├── ISBI2016_ISIC_Part1_Training_Data/        (900 images; not used: no normal images)
        └── ISBI2016_ISIC_Part1_Training_GroundTruth/

    Every image shows a lesion: a zero-shot pixel-level set (MoECLIP, AnomalyCLIP, AdaCLIP evaluate the
    test part). Masks pair as ``<stem>_Segmentation.png``; binarised at grey level ``> 127``. No training
    split here (``fit`` fails; ``test`` / ``predict`` work).

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("isic2016",)
    DATASET_NAME = "ISIC 2016"
    DOMAIN = "medical"

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split in ("train", "val"):
            return []
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        data = self.root / f"ISBI2016_ISIC_Part1_{_SPLITS[split]}_Data"
        truth = self.root / f"ISBI2016_ISIC_Part1_{_SPLITS[split]}_GroundTruth"
        images = require_images(list_images(data), data, "ISIC 2016 test images")
        masks = {p.stem: p for p in list_images(truth)}
        missing = [
            (p, truth / f"{p.stem}_Segmentation.png") for p in images if f"{p.stem}_Segmentation" not in masks
        ]
        if missing:
            raise missing_mask_error(
                missing, "ISIC masks are '<image stem>_Segmentation.png' in the GroundTruth folder."
            )
        return [
            Sample(str(p), 1, category, (str(masks[f"{p.stem}_Segmentation"]),), "lesion") for p in images
        ]

    def build_dataset(self, categories: Sequence[str], split: str) -> AnomalyDataset | None:
        return ThresholdMaskDataset.wrap(super().build_dataset(categories, split), 127)
