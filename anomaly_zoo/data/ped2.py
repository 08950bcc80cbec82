"""UCSD Ped2 video frames as an image anomaly set (as AnomalyMoE evaluates its video domain)."""

from __future__ import annotations

import re
from pathlib import Path

from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import list_images, match_by_stem, read_mask
from anomaly_zoo.data.layout import missing_mask_error, require_images, subdirs
from anomaly_zoo.data.mvtec_style import mvtec_style_samples
from anomaly_zoo.data.single_set import SingleSetDataModule
from anomaly_zoo.registry import DATAMODULES

_CLIP = re.compile(r"^(Train|Test)\d{3}$")


@DATAMODULES.register("ped2")
class Ped2(SingleSetDataModule):
    """UCSD Ped2 (Mahadevan et al., CVPR 2010; pixel masks by Li et al., TPAMI 2014), from
    ``UCSD_Anomaly_Dataset.tar.gz`` extracted.

    Layout (``root`` is ``UCSD_Anomaly_Dataset.v1p2/UCSDped2``)::

        <root>/
        ├── Train/
        │   ├── Train001/        001.tif … 120.tif   (grey frames, 240×360; normal only)
        │   └── … Train016/
        └── Test/
            ├── Test001/         001.tif … 180.tif
            ├── Test001_gt/      001.bmp … 180.bmp   (per-frame masks; all zero = normal frame)
            └── … Test012/, Test012_gt/

    Every frame is one sample (category ``pedestrian``, AnomalyMoE's name; ``defect_type`` = the clip). A test frame is
    anomalous when its mask has a defect pixel, so frame labels and masks agree by construction. Frames
    pair with masks by stem (``001.tif`` ↔ ``001.bmp``); ``*_gt`` folders are never read as clips and
    macOS ``._*`` / ``.DS_Store`` files in the archive are skipped. The frame-level AUROC is pooled over all
    test frames (as AnomalyMoE's image AUROC), not the per-video protocol of video AD papers.

    AnomalyMoE converts Ped2 to the MVTec AD layout (``Ped2/pedestrian/{train/good, test/<type>,
    ground_truth/<type>}``; its README, "Data format"); pointing ``root`` at such a ``Ped2`` folder reads that
    copy (masks ``<stem>.<ext>`` or ``<stem>_mask.<ext>``).

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = ("pedestrian",)
    DATASET_NAME = "UCSD Ped2"
    DOMAIN = "industrial"  # surveillance video: no medical rules

    def _clips(self, split_dir: Path) -> list[Path]:
        return [d for d in subdirs(split_dir) if _CLIP.match(d.name)]

    def make_samples(self, category: str, split: str) -> list[Sample]:
        if split == "val":
            return []
        if split not in ("train", "test"):
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        converted = self.root / category
        if (converted / "test").is_dir() and not (self.root / "Test").is_dir():
            return mvtec_style_samples(converted, category, split, mask_suffixes=("", "_mask"))
        split_dir = self.root / split.capitalize()
        clips = self._clips(split_dir)
        if not clips:
            raise DatasetError(
                f"No UCSD Ped2 {split} clips ({split.capitalize()}NNN/) under '{split_dir}' (check `root`)."
            )
        samples: list[Sample] = []
        missing: list[tuple[Path, Path]] = []
        for clip in clips:
            frames = require_images(list_images(clip), clip, f"frames of {clip.name}")
            if split == "train":
                samples += [Sample(str(p), 0, category, (), clip.name) for p in frames]
                continue
            gt_dir = clip.parent / f"{clip.name}_gt"
            pairs = match_by_stem(frames, list_images(gt_dir), ("",))
            missing += [(p, gt_dir / f"{p.stem}.bmp") for p in frames if p not in pairs]
            for frame in frames:
                if frame in pairs:
                    anomalous = bool(read_mask(pairs[frame]).any())
                    mask = (str(pairs[frame]),) if anomalous else ()
                    samples.append(Sample(str(frame), int(anomalous), category, mask, clip.name))
        if missing:
            raise missing_mask_error(
                missing, "Each Test/TestNNN/<frame>.tif needs Test/TestNNN_gt/<frame>.bmp."
            )
        return samples
