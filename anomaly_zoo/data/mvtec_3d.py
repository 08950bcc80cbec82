"""MVTec 3D-AD, read as the publisher ships it: RGB images, masks, and optionally the ``xyz`` point maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import list_images, match_by_stem
from anomaly_zoo.data.layout import format_list, missing_mask_error, require_images, subdirs
from anomaly_zoo.data.mvtec_style import mvtec_style_samples
from anomaly_zoo.data.transforms import ImageSize
from anomaly_zoo.registry import DATAMODULES

_TIFF = (".tiff", ".tif")


def read_xyz(path: str | Path) -> np.ndarray:
    """An (H, W, 3) float32 organised point cloud (x, y, z per pixel; 0 where the sensor saw nothing)."""
    try:
        import tifffile
    except ImportError as err:  # optional dependency: only the xyz option needs it
        raise DatasetError(
            "Reading MVTec 3D-AD xyz TIFFs needs tifffile: `pip install tifffile` (or `anomaly-zoo[3d]`), "
            "or leave `load_xyz` off."
        ) from err
    try:
        xyz = np.asarray(tifffile.imread(str(path)), dtype=np.float32)
    except (OSError, ValueError) as err:
        raise DatasetError(f"Cannot read point map '{path}': {err}") from err
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatasetError(f"Point map '{path}' has shape {xyz.shape}; expected (H, W, 3) x/y/z channels.")
    return xyz


class XYZDataset(AnomalyDataset):
    """Items also carry ``xyz`` float32 (3, H, W): the point map, resized (nearest) to the mask's size."""

    def __init__(self, base: AnomalyDataset, xyz_paths: dict[str, str]) -> None:
        super().__init__(base.samples, base.transform, base.image_size, base.interpolation, base.split)
        self.xyz_paths = xyz_paths

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        path = self.xyz_paths[self.samples[index].image_path]
        xyz = read_xyz(path)
        h, w = item["mask"].shape[-2:]
        if xyz.shape[:2] != (h, w):
            # Nearest keeps real points (no blending of a surface point with a missing one, which is 0).
            xyz = np.stack(
                [np.asarray(Image.fromarray(xyz[..., c]).resize((w, h), Image.NEAREST)) for c in range(3)], -1
            )
        item["xyz"] = torch.from_numpy(np.ascontiguousarray(xyz.transpose(2, 0, 1)))
        return item


@DATAMODULES.register("mvtec_3d")
class MVTec3D(AnomalyDataModule):
    """MVTec 3D-AD (Bergmann et al., VISAPP 2022), read from the extracted ``mvtec_3d_anomaly_detection`` archive.

    Layout (the archive's ``readme.txt``)::

        <root>/
        ├── bagel/
        │   ├── train/good/
        │   │   ├── rgb/             000.png, …
        │   │   └── xyz/             000.tiff, …   (float32 H×W×3 point map, 0 = no point)
        │   ├── validation/good/     rgb/, xyz/     → split "val" (normal only)
        │   ├── test/
        │   │   ├── good/            rgb/, xyz/, gt/  (gt/ of good images is all zero)
        │   │   ├── crack/           rgb/, xyz/, gt/000.png (0/255), …
        │   │   └── …                (one folder per defect type)
        │   └── calibration/         camera_parameters.json
        ├── cable_gland/ carrot/ cookie/ dowel/ foam/ peach/ potato/ rope/ tire/

    Images and masks pair by stem inside each ``test/<defect>/`` folder (``rgb/000.png`` ↔ ``gt/000.png``).
    With ``load_xyz``, items also carry ``xyz`` (3, H, W) float32, resized with nearest neighbour (needs
    ``tifffile``); a missing ``xyz/<stem>.tiff`` is an error naming the image.

    An RGB-only copy in the MVTec AD layout (``<cat>/{train/good, test/<defect>, ground_truth/<defect>}``,
    as AnomalyMoE prepares it) loads too, without ``xyz``.

    Args:
        load_xyz: also load the point maps as batch key ``xyz``.
        others: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = (
        "bagel",
        "cable_gland",
        "carrot",
        "cookie",
        "dowel",
        "foam",
        "peach",
        "potato",
        "rope",
        "tire",
    )
    DATASET_NAME = "MVTec 3D-AD"
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
        load_xyz: bool = False,
    ) -> None:
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
        self.load_xyz = load_xyz
        if load_xyz and train_augmentations:
            raise DatasetError(
                "`train_augmentations` would move the RGB image but not the xyz map: use one or the other."
            )

    def _folder(self, directory: Path, category: str, defect: str, label: int) -> list[Sample]:
        images = list_images(directory / "rgb")
        if label == 0:
            return [Sample(str(p), 0, category, (), defect) for p in images]
        pairs = match_by_stem(images, list_images(directory / "gt"), ("",))
        missing = [(p, directory / "gt" / f"{p.stem}.png") for p in images if p not in pairs]
        if missing:
            raise missing_mask_error(
                missing, "MVTec 3D-AD masks live next to the images: test/<defect>/gt/<stem>.png."
            )
        return [Sample(str(p), 1, category, (str(pairs[p]),), defect) for p in images]

    def make_samples(self, category: str, split: str) -> list[Sample]:
        base = self.root / category
        if (base / "ground_truth").is_dir():  # an RGB-only copy in the MVTec AD layout
            if self.load_xyz:
                raise DatasetError(
                    f"'{base}' is an RGB-only copy (MVTec AD layout): it has no xyz maps for `load_xyz`."
                )
            if split == "val":
                return []
            return mvtec_style_samples(base, category, split, mask_suffixes=("", "_mask"))
        if split in ("train", "val"):
            directory = base / ("train" if split == "train" else "validation") / "good"
            if split == "val" and not directory.is_dir():
                return []
            require_images(
                list_images(directory / "rgb"), directory / "rgb", f"{split} images for '{category}'"
            )
            return self._folder(directory, category, "good", 0)
        if split != "test":
            raise ValueError(f"Unknown split '{split}'; expected 'train', 'val' or 'test'.")
        samples: list[Sample] = []
        for defect_dir in subdirs(base / "test"):
            label = 0 if defect_dir.name == "good" else 1
            samples += self._folder(defect_dir, category, defect_dir.name, label)
        require_images([Path(s.image_path) for s in samples], base / "test", f"test images for '{category}'")
        return samples

    def _xyz_paths(self, samples: Sequence[Sample]) -> dict[str, str]:
        paths, missing = {}, []
        for s in samples:
            image = Path(s.image_path)
            found = [image.parent.parent / "xyz" / (image.stem + ext) for ext in _TIFF]
            hit = next((p for p in found if p.is_file()), None)
            if hit is None:
                missing.append(f"'{image}' (expected '{found[0]}')")
            else:
                paths[s.image_path] = str(hit)
        if missing:
            raise DatasetError(f"{len(missing)} image(s) have no xyz point map:\n{format_list(missing)}")
        return paths

    def build_dataset(self, categories: Sequence[str], split: str) -> AnomalyDataset | None:
        dataset = super().build_dataset(categories, split)
        if dataset is None or not self.load_xyz:
            return dataset
        return XYZDataset(dataset, self._xyz_paths(dataset.samples))
