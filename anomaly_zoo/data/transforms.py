"""Resize (PIL, as the authors' pipelines do), optional train augmentation, normalisation (albumentations)."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2
from PIL import Image

from anomaly_zoo.data.resize import resize_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD), "none": ((0, 0, 0), (1, 1, 1))}

AUGMENTATIONS = {
    "hflip": lambda: A.HorizontalFlip(p=0.5),
    "vflip": lambda: A.VerticalFlip(p=0.5),
    "rot90": lambda: A.RandomRotate90(p=0.5),
    "color_jitter": lambda: A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0, p=0.5),
    "moeclip": lambda: moeclip_joint_augmentation(),
}

ImageSize = int | tuple[int, int] | None


def moeclip_joint_augmentation() -> A.BasicTransform:
    """MoECLIP's joint image+mask augmentation (authors' ``dataset/__init__.py``): rotation ±30° (p 0.5),
    translation ±15 % per axis (p 0.5), horizontal and vertical flips (p 0.5 each); nearest interpolation.

    The authors transform the CLIP-normalised tensor with torchvision's defaults, so uncovered pixels become 0
    in normalised space, i.e. the CLIP mean colour here (this runs before ``Normalize``); masks get 0.
    """
    mean_colour = tuple(255.0 * c for c in CLIP_MEAN)
    border = {"interpolation": cv2.INTER_NEAREST, "mask_interpolation": cv2.INTER_NEAREST,
              "border_mode": cv2.BORDER_CONSTANT, "fill": mean_colour, "fill_mask": 0}
    return A.Sequential([
        A.Rotate(limit=30, p=0.5, **border),
        A.Affine(translate_percent={"x": (-0.15, 0.15), "y": (-0.15, 0.15)}, p=0.5, **border),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
    ], p=1.0)


def as_hw(image_size: ImageSize) -> tuple[int, int] | None:
    """``224`` → ``(224, 224)``; ``(h, w)`` stays; ``None`` means native size."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def resize_pair(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None, interpolation: str = "bilinear"
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGB image with ``interpolation`` (PIL, antialiased like the papers) and its mask with nearest."""
    if size is None or image.shape[:2] == size:
        return image, mask
    image = resize_image(image, size, interpolation)
    h, w = size
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    return image, mask


def build_transform(
    normalization: str | tuple[Sequence[float], Sequence[float]] = "imagenet",
    augmentations: Sequence[str] = (),
) -> A.Compose:
    """Albumentations pipeline applied after resizing: augmentations (train only), normalise, to tensor."""
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"Unknown normalization '{normalization}'; choose one of {sorted(NORMALIZATIONS)}.")
        mean, std = NORMALIZATIONS[normalization]
    else:
        mean, std = normalization
    unknown = [a for a in augmentations if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"Unknown augmentation(s) {unknown}; choose from {sorted(AUGMENTATIONS)}.")
    steps = [AUGMENTATIONS[a]() for a in augmentations]
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)
