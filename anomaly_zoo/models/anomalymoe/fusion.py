"""Map fusion and image score (AnomalyMoE inference, spec "Inference"): per-level min–max, level weights, blur.

Per level (patch, global, component): the map at the crop resolution is min–max normalised with a range
(the class's whole test set in the authors' protocol; the training images by default here), weighted by the
MAX routing weight among that level's experts (0 if none is selected) and the levels are summed. The sum is
resized to 256 (bilinear, align_corners=False), blurred by a 5×5 Gaussian (σ 4, zero padding) and the image
score is the mean of its top 1 % pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LEVELS = ("patch", "global", "component")


def level_weights(routing_weights: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """(B, E) → (B, 3): the max routing weight within each family (0 for an empty family)."""
    out = []
    for chunk in torch.split(routing_weights, list(counts), dim=1):
        out.append(chunk.amax(dim=1) if chunk.shape[1] else routing_weights.new_zeros(routing_weights.shape[0]))
    return torch.stack(out, dim=1)


def min_max(x: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float, eps: float = 1e-11) -> torch.Tensor:
    return (x - low) / (high - low + eps)


def gaussian_kernel(size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """Normalised 2-D Gaussian (1, 1, size, size), centred at (size − 1)/2 (the authors' get_gaussian_kernel)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    return (g / g.sum()).float().view(1, 1, size, size)


def blur(maps: torch.Tensor, size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """5×5 Gaussian blur with zero padding, (B, 1, H, W)."""
    return F.conv2d(maps, gaussian_kernel(size, sigma).to(maps), padding=size // 2)


def fuse_levels(
    level_maps: Sequence[torch.Tensor], weights: torch.Tensor, ranges: Sequence[tuple], size: tuple[int, int]
) -> torch.Tensor:
    """Σ_l w_l · minmax_l(resize(map_l, size)); maps (B, 1, h_l, w_l), weights (B, L), ranges [(low, high)]."""
    total = None
    for index, (level_map, (low, high)) in enumerate(zip(level_maps, ranges)):
        if tuple(level_map.shape[-2:]) != tuple(size):
            level_map = F.interpolate(level_map, size=size, mode="bilinear", align_corners=False)
        term = weights[:, index].view(-1, 1, 1, 1) * min_max(level_map, low, high)
        total = term if total is None else total + term
    return total


def finish_map(fused: torch.Tensor, output_size: int = 256, blur_size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """Resize to ``output_size`` (bilinear, align_corners=False) and blur."""
    resized = F.interpolate(fused, size=(output_size, output_size), mode="bilinear", align_corners=False)
    return blur(resized, blur_size, sigma)


def top_percent_score(maps: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Mean of the top ``fraction`` of each map's pixels (at least one): (B, 1, H, W) → (B,)."""
    flat = maps.flatten(1)
    k = max(1, int(flat.shape[1] * fraction))
    return flat.topk(k, dim=1).values.mean(dim=1)
