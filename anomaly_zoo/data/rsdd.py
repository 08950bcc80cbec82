"""RSDDs (rail surface defects), read as the authors ship it: two rail types, JPEG images and masks."""

from __future__ import annotations

from collections.abc import Sequence

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.data.layout import missing_mask_error, require_images
from anomaly_zoo.data.mask_threshold import ThresholdMaskDataset
from anomaly_zoo.data.mvtec_style import mvtec_style_samples
from anomaly_zoo.registry import DATAMODULES

#: category -> folder of the release
FOLDERS = {"type_i": "Type-I RSDDs dataset", "type_ii": "Type-II RSDDs dataset"}
#: The image folder's name in the release, then a shortened name some copies use.
IMAGE_DIRS = ("Rail surface images", "Rail images")


@DATAMODULES.register("rsdd")
class RSDD(AnomalyDataModule):
    """RSDDs (Gan et al., "A Hierarchical Extractor-Based Visual Rail Surface Inspection System",
    IEEE Sensors Journal 2017), the ``RSDDs dataset`` archive extracted.

    Layout::

        <root>/                                  ("RSDDs dataset")
        ├── Type-I RSDDs dataset/                (express rails; 67 images, 160 px wide strips)
        │   ├── Rail surface images/  rail_1.jpg, …   ("Rail images" accepted)
        │   └── GroundTruth/          rail_1.jpg, …   (JPEG masks: same file name)
        └── Type-II RSDDs dataset/               (heavy-haul rails; 128 images, 55 px wide)
            ├── Rail surface images/
            └── GroundTruth/

    Categories ``type_i`` and ``type_ii``. Every image holds at least one defect, so RSDD measures pixel
    metrics (image metrics are undefined without normal images); there is no training split (zero-shot
    use; ``fit`` fails). The masks are JPEGs, so they are binarised at grey level ``> 127`` (``> 0`` would
    mark the compression noise around each defect).

    The copy the zero-shot papers evaluate (AdaCLIP / AA-CLIP / MoECLIP's download, with normal crops) is
    laid out like MVTec AD and loads too; each such folder is a category::

        <root>/Metal15/
        ├── test/good/           RSDD_II-metal-null-001262_0000000716.bmp, …
        ├── test/anomaly/        RSDD_I-metal-defect-000001_0000000021.bmp, …
        └── ground_truth/anomaly/ RSDD_I-metal-defect-000001_0000000021.png, …  (same stem, .png)

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("type_i", "type_ii")
    DATASET_NAME = "RSDDs"
    DOMAIN = "industrial"

    def available_categories(self) -> list[str]:
        raw = [c for c, folder in FOLDERS.items() if (self.root / folder).is_dir()]
        folders = sorted(
            p.name for p in self.root.iterdir() if (p / "test").is_dir() and (p / "ground_truth").is_dir()
        )
        return raw + folders

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split in ("train", "val"):
            return []
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        if category not in FOLDERS:  # the MVTec-style copy
            return mvtec_style_samples(self.root / category, category, split, mask_suffixes=("", "_mask"))
        base = self.root / FOLDERS[category]
        image_dir = next((base / d for d in IMAGE_DIRS if (base / d).is_dir()), base / IMAGE_DIRS[0])
        images = require_images(list_images(image_dir), image_dir, f"RSDD {category} images")
        pairs = match_by_stem(images, list_images(base / "GroundTruth"), ("",))
        missing = [(p, base / "GroundTruth" / p.name) for p in images if p not in pairs]
        if missing:
            raise missing_mask_error(missing, "RSDD masks in GroundTruth/ have the image's stem.")
        return [Sample(str(p), 1, category, (str(pairs[p]),), "defect") for p in images]

    def build_dataset(self, categories: Sequence[str], split: str) -> AnomalyDataset | None:
        return ThresholdMaskDataset.wrap(super().build_dataset(categories, split), 127)
