"""MoECLIP's maps and scores (§3.5 and the authors' evaluation): training probabilities, the 12-map anomaly
map, the detection score and the image-score rules, per-image or with the authors' per-category min-max."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

#: CLIP's logit scale, fixed (the authors multiply cosines by 100 for the maps, not for the image CE).
LOGIT_SCALE = 100.0
#: Gaussian blur of the anomaly map per domain: (kernel size, sigma).
BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}
DOMAINS = tuple(BLUR)


def similarity_logits(features: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """100·f·T as a map: ``features`` (B, h·w, C) unit vectors, ``text`` (B, C, 2) → (B, 2, h, w)."""
    logits = LOGIT_SCALE * features @ text
    return logits.transpose(1, 2).reshape(features.shape[0], 2, *grid)


def training_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners) upsampling of the logits to the image, THEN softmax over the 2 states."""
    return torch.softmax(F.interpolate(logits, size=size, mode="bilinear", align_corners=True), dim=1)


def patch_anomaly(logits: torch.Tensor) -> torch.Tensor:
    """a = (100·cos_a + 1 − 100·cos_n)/2 per patch, no softmax: (B, 2, h, w) → (B, 1, h, w)."""
    return (logits[:, 1:2] + 1 - logits[:, 0:1]) / 2


def blur(anomaly: torch.Tensor, domain: str) -> torch.Tensor:
    """Normalised Gaussian blur with reflected borders (kornia's ``gaussian_blur2d`` defaults, as the authors')."""
    kernel, sigma = BLUR[domain]
    return gaussian_blur(anomaly, [kernel, kernel], [sigma, sigma])


def anomaly_map(
    logits: list[torch.Tensor], domain: str, size: tuple[int, int]
) -> torch.Tensor:
    """The sum over all maps of blur(a) upsampled bilinearly (align_corners) to ``size``: (B, 1, H, W).

    Blur and bilinear upsampling are linear, so the maps are summed at patch resolution and blurred and
    upsampled once — the same values as the authors' per-map blur → upsample → sum, 12× less work.
    """
    total = torch.stack([patch_anomaly(x) for x in logits]).sum(dim=0)
    return F.interpolate(blur(total, domain), size=size, mode="bilinear", align_corners=True)


def detection_score(detection: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """s = (d·t_anomalous + 1)/2: ``detection`` (B, C), ``text`` (B, C, 2) → (B,)."""
    return ((detection.unsqueeze(1) @ text[:, :, 1:]).reshape(-1) + 1) / 2


def map_value_range(num_maps: int) -> tuple[float, float]:
    """The a-priori range of the summed map: a ∈ [(1 − 2·100)/2, (1 + 2·100)/2] per map (cosines in [−1, 1]);
    blur and bilinear upsampling are convex combinations, so the sum stays in num_maps times that."""
    return num_maps * (1 - 2 * LOGIT_SCALE) / 2, num_maps * (1 + 2 * LOGIT_SCALE) / 2


def fuse(map_max: torch.Tensor, score: torch.Tensor, domain: str) -> torch.Tensor:
    """The authors' image score: 0.5·max(map) + 0.5·s for industrial sets, max(map) for medical ones."""
    return 0.5 * map_max + 0.5 * score if domain == "industrial" else map_max


def fixed_range_image_score(map_max: torch.Tensor, score: torch.Tensor, num_maps: int, domain: str) -> torch.Tensor:
    """Per-image (non-transductive) rule: max(map) rescaled by the map's a-priori range to [0, 1], fused with s
    (already in [0, 1]) — every image scored alone, nothing taken from the rest of the test set."""
    low, high = map_value_range(num_maps)
    return fuse((map_max - low) / (high - low), score, domain)


def minmax_if_outside_unit(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The authors' rule: min-max normalise with the set's (low, high) only when the set leaves [0, 1].

    A constant set (high == low) gives zeros (the authors' code divides by zero there).
    """
    low, high = float(low), float(high)
    if high <= 1 and low >= 0:
        return values
    if high == low:
        return torch.zeros_like(values)
    return (values - low) / (high - low)


def transductive_image_score(
    map_max: torch.Tensor,
    score: torch.Tensor,
    map_range: tuple[torch.Tensor, torch.Tensor],
    score_range: tuple[torch.Tensor, torch.Tensor],
    domain: str,
) -> torch.Tensor:
    """The authors' transductive rule for one category: maps and s min-max normalised over the category's
    whole test set (each only when it leaves [0, 1]), then fused. ``map_range`` = (min, max) over all pixels
    of all maps; the max of a normalised map is the normalised max (the map is affine in it)."""
    return fuse(minmax_if_outside_unit(map_max, *map_range), minmax_if_outside_unit(score, *score_range), domain)
