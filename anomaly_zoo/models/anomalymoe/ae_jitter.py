"""``image_ae``: the copy of the image the global experts read, with one random colour jitter (training only).

The authors apply ``RandomChoice([ColorJitter(brightness=0.2), ColorJitter(contrast=0.2),
ColorJitter(saturation=0.2)])`` to the PIL image before normalisation — at test time too, which makes their
test maps random. Here it is applied on the normalised tensor (undo the normalisation, jitter in [0, 1],
redo it), per image, in training only; at test ``image_ae`` is the image itself.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF


def jitter_for_autoencoder(
    images: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float],
    strength: float = 0.2, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One of brightness / contrast / saturation, factor uniform in [1 − s, 1 + s], per image."""
    if strength <= 0:
        return images
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    pixels = (images * s + m).clamp(0, 1)
    choice = torch.randint(0, 3, (images.shape[0],), generator=generator).tolist()
    factors = (1 - strength + 2 * strength * torch.rand(images.shape[0], generator=generator)).tolist()
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    out = torch.stack([adjust[c](img, f) for img, c, f in zip(pixels, choice, factors)])
    return (out - m) / s
