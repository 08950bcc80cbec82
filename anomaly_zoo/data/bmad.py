"""BMAD's pixel-level medical sets (Brain MRI, Liver CT, retinal OCT RESC), read as the benchmark ships them."""

from __future__ import annotations

from pathlib import Path

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.data.layout import missing_mask_error, require_images
from anomaly_zoo.data.mvtec_style import mvtec_style_samples
from anomaly_zoo.registry import DATAMODULES

_SPLIT_DIRS = {"train": "train", "val": "valid", "test": "test"}
#: Mask folder names in circulation: BMAD's README says ``label``, the Drive copies and MVFA use ``anomaly_mask``.
MASK_DIRS = ("label", "anomaly_mask")


def _images(directory: Path) -> list[Path]:
    """``<dir>/img/`` for the pixel-level sets, ``<dir>/`` itself for the image-level ones."""
    return list_images(directory / "img") if (directory / "img").is_dir() else list_images(directory)


@DATAMODULES.register("bmad")
class BMAD(AnomalyDataModule):
    """BMAD (Bao et al., CVPR Workshops 2024), the reorganised sets from the authors' Google Drive.

    Layout (BMAD ``README.md``, "Brain dataset (image & pixel level)"); ``root`` holds the set folders,
    each one category::

        <root>/
        ├── Brain/                          (BraTS2021 slices; also "BraTS2021_slice")
        │   ├── train/good/img/             00003_60.png, …
        │   ├── valid/good/img/             …                  → split "val" (with anomalies)
        │   ├── valid/Ungood/img/           00124_60.png, …
        │   ├── valid/Ungood/label/         00124_60.png, …    (mask: same file name; or anomaly_mask/)
        │   ├── test/good/img/              00000_96.png, …
        │   ├── test/Ungood/img/            00002_60.png, …
        │   └── test/Ungood/label/          00002_60.png, …
        ├── Liver/                          (BTCV + LiTS CT slices; "liver" in the Drive copy)
        └── RESC/                           (retinal OCT; "Retina" in MoECLIP's copy)

    The same sets as reorganised by MVFA (Huang et al., CVPR 2024; used by AA-CLIP and MoECLIP) are
    ``Brain_AD/``, ``Liver_AD/``, ``Retina_RESC_AD/`` with only ``valid/`` and ``test/`` (no ``train/``:
    zero-shot) and ``anomaly_mask/`` folders; they load the same way.

    The image-level BMAD sets (OCT2017, RSNA, camelyon16) have no ``img/``/``label/`` level:
    ``<split>/{good,Ungood}/*.png``; their anomalous images carry image labels only (no masks).
    Masks pair with images by file name; a missing one is an error. Masks are binarised ``> 0``.
    AnomalyMoE's copies in the MVTec AD layout (``BMAD/{BrainMRI,LiverCT,RESC}/{train/good, test/<type>,
    ground_truth/<type>}``) load too.

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = (
        "Brain", "Liver", "liver", "RESC", "Retina", "Brain_AD", "Liver_AD", "Retina_RESC_AD", "BrainMRI", "LiverCT",
    )  # fmt: skip
    DATASET_NAME = "BMAD"
    DOMAIN = "medical"

    def _looks_like_category(self, name: str) -> bool:
        return (self.root / name / "test" / "Ungood").is_dir() or (self.root / name / "ground_truth").is_dir()

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split not in _SPLIT_DIRS:
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        if (self.root / category / "ground_truth").is_dir():  # AnomalyMoE's MVTec-layout copy
            if split == "val":
                return []
            return mvtec_style_samples(self.root / category, category, split, mask_suffixes=("", "_mask"))
        base = self.root / category / _SPLIT_DIRS[split]
        if split in ("train", "val") and not base.is_dir():
            return []  # MVFA's copies have no train/ (zero-shot); fit then fails with "no training images"
        good = _images(base / "good")
        if split == "train":
            require_images(good, base / "good", f"training images for '{category}'")
            return [Sample(str(p), 0, category, (), "good") for p in good]
        samples = [Sample(str(p), 0, category, (), "good") for p in good]
        ungood = base / "Ungood"
        bad = _images(ungood)
        mask_dir = next((ungood / d for d in MASK_DIRS if (ungood / d).is_dir()), None)
        if mask_dir is not None:
            pairs = match_by_stem(bad, list_images(mask_dir), ("",))
            missing = [(p, mask_dir / p.name) for p in bad if p not in pairs]
            if missing:
                raise missing_mask_error(
                    missing, f"BMAD masks have the image's file name in Ungood/{mask_dir.name}/."
                )
            samples += [Sample(str(p), 1, category, (str(pairs[p]),), "Ungood") for p in bad]
        else:
            samples += [Sample(str(p), 1, category, (), "unlabelled") for p in bad]
        require_images([Path(s.image_path) for s in samples], base, f"{split} images for '{category}'")
        return samples
