"""AnomalyMoE's component masks: unsupervised part segmentation of each category (spec, section "Masks").

Offline and per category, as in the authors' ``segment_image.py`` and their loader's cluster filter:

1. frozen DINO v1 ViT-S/16 last-layer tokens (final norm, patch tokens only) of the 448-px image;
2. a 1 % greedy coreset of every training image's tokens, pooled, clustered by k-means (k = 5);
3. per image: cosine of every token to every centre, minus its spatial mean, clamped ≥ 0, upsampled
   bilinearly (``align_corners=True``) to 448 px, softmax over the clusters;
4. a 2-iteration dense CRF on the 448-px image (:mod:`.crf`);
5. each posterior thresholded by Otsu's method on the posterior itself, quantised to 8 bits — the authors
   threshold the luma of a JET-coloured JPEG of it, which is not monotonic in the probability;
6. clusters that look like background on the category's first training image are dropped: those whose
   thresholded mask touches ≥ 3 image corners, or whose 11×11 box-smoothed posterior peaks ≤ 64/255.

Pixel constants (10-px Otsu margin, 20-px corners, 11-px blur, the CRF's widths) are the authors' at
448 px and scale with ``image_size`` when masks are prepared at another size (the tiny test/demo setups).
Files and caching live in :mod:`.prepare_masks`; this module maps tensors to tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.anomalymoe.crf import CRFParams, dense_crf
from anomaly_zoo.models.components.backbone import PretrainedWeightsError

#: The size at which the authors' pixel constants are given.
REFERENCE_SIZE = 448


class DinoPatchFeatures(nn.Module):
    """Frozen timm ViT → last-layer patch tokens (B, C, H/16, W/16), final norm applied, prefix tokens dropped.

    The position embedding is resampled to the input's grid the DINO v1 way (bicubic with scale factor
    ``(grid + 0.1) / 14``, no antialias; ``dino/vision_transformer.py::interpolate_pos_encoding``),
    not timm's (antialiased bicubic to the exact size), so pretrained features match the authors'.
    """

    def __init__(
        self,
        name: str = "vit_small_patch16_224.dino",
        pretrained: bool = True,
        weights: str | Path | None = None,
        model_kwargs: dict | None = None,
        weights_option: str = "component_mask_weights",
    ) -> None:
        super().__init__()
        import timm

        kwargs = {"num_classes": 0, "dynamic_img_size": True, **(model_kwargs or {})}
        try:
            if weights is not None:
                path = Path(weights).expanduser()
                if not path.is_file():
                    raise PretrainedWeightsError(
                        f"Component-mask weights file '{path}' does not exist (check `{weights_option}`)."
                    )
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
            else:
                model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except PretrainedWeightsError:
            raise
        except Exception as err:  # timm raises many types for hub/cache failures
            if weights is None and not pretrained:
                raise
            raise PretrainedWeightsError(
                f"Could not load the DINO weights of '{name}' for the component masks ({type(err).__name__}: {err}); "
                f"pass a local file with `{weights_option} PATH` (timm's {name} checkpoint), or put it in the "
                "Hugging Face cache."
            ) from err
        if getattr(model, "num_prefix_tokens", 1) != 1 or getattr(model, "no_embed_class", False):
            raise ValueError(f"'{name}' is not a DINO-v1-style ViT (one class token inside the position embedding).")
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.channels = int(model.embed_dim)

    def train(self, mode: bool = True) -> DinoPatchFeatures:
        return super().train(False)  # frozen: never dropout / training mode

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.model.pos_embed
        side = int(math.isqrt(pos.shape[1] - 1))
        if grid == (side, side):
            return pos
        patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # DINO v1 adds 0.1 to avoid a floating-point off-by-one in the output size (their issue #8).
        scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
        if tuple(patch_pos.shape[-2:]) != grid:
            raise RuntimeError(f"position embedding resampled to {tuple(patch_pos.shape[-2:])}, expected {grid}")
        return torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2)], dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.model
        tokens = vit.patch_embed(images)  # (B, h, w, C) with dynamic_img_size
        batch, h, w, channels = tokens.shape
        pos = self.position_embedding((h, w))
        cls = vit.cls_token.expand(batch, -1, -1) + pos[:, :1]
        x = torch.cat([cls, tokens.reshape(batch, h * w, channels) + pos[:, 1:]], dim=1)
        x = vit.norm(vit.blocks(vit.norm_pre(vit.pos_drop(x))))
        return x[:, 1:].transpose(1, 2).reshape(batch, channels, h, w)


def greedy_coreset_indices(features: torch.Tensor, ratio: float = 0.01) -> torch.Tensor:
    """Farthest-point (greedy k-center) coreset of ``max(1, int(ratio·N))`` rows of ``features`` (N, C).

    The first pick is the row with the largest norm of its distance row, then each pick is the point
    farthest from those chosen — the authors' ``GreedyCoresetSampler``, without their random 128-d
    projection (a speed-up that makes the picks depend on an unseeded draw; 784 points need none).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}.")
    count = max(1, int(len(features) * ratio))
    distances = torch.cdist(features.float(), features.float())
    nearest = distances.norm(dim=1)
    picks = []
    for _ in range(count):
        index = int(nearest.argmax())
        picks.append(index)
        nearest = torch.minimum(nearest, distances[:, index])
    return torch.tensor(picks, dtype=torch.long)


def kmeans(points: torch.Tensor, k: int, iterations: int = 100, restarts: int = 10, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; the best of ``restarts`` by inertia. Returns centres (k, C).

    Hand-written (a few lines of torch) rather than scikit-learn, a heavy dependency for one call. The
    authors call ``MiniBatchKMeans.partial_fit`` once per image on its 7 coreset points; we cluster all
    training images' coreset points at once, to convergence (deterministic for a seed).
    """
    points = points.float()
    if len(points) < k:
        raise ValueError(f"k-means needs at least k={k} points, got {len(points)} (more training images needed).")
    generator = torch.Generator().manual_seed(seed)
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = points[torch.randint(len(points), (1,), generator=generator)]
        for _ in range(1, k):  # k-means++: next centre drawn ∝ squared distance to the nearest chosen one
            weights = torch.cdist(points, centres).min(1).values.pow(2)
            if float(weights.sum()) == 0:
                weights = torch.ones(len(points))
            centres = torch.cat([centres, points[torch.multinomial(weights, 1, generator=generator)]])
        for _ in range(iterations):
            assignment = torch.cdist(points, centres).argmin(1)
            updated = centres.clone()
            for j in range(k):
                members = points[assignment == j]
                if len(members):
                    updated[j] = members.mean(0)
            if torch.allclose(updated, centres):
                break
            centres = updated
        inertia = float(torch.cdist(points, centres).min(1).values.pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    assert best is not None
    return best


def cluster_similarity(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Cosine of every token (B, C, h, w) to every centre (K, C), minus its spatial mean, clamped ≥ 0 → (B, K, h, w)."""
    cosine = torch.einsum("kc,bchw->bkhw", F.normalize(centres.float(), dim=1), F.normalize(features.float(), dim=1))
    return (cosine - cosine.mean(dim=(2, 3), keepdim=True)).clamp_min(0)


def cluster_probabilities(similarity: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample (B, K, h, w) bilinearly (``align_corners=True``, as the authors) and softmax over K."""
    return F.interpolate(similarity, size=size, mode="bilinear", align_corners=True).softmax(dim=1)


def quantize(probability: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] → uint8 ``round(255·p)`` (the authors' 8-bit map, before their JET colouring)."""
    return np.clip(np.round(np.asarray(probability, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def otsu_threshold(levels: np.ndarray) -> int:
    """Otsu's threshold of 8-bit values: the ``t`` maximising the between-class variance of ``≤ t`` vs ``> t``.

    Ties go to the smallest ``t`` (OpenCV's rule). A constant input gives its value (nothing is above it).
    """
    histogram = np.bincount(np.asarray(levels, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    total = histogram.sum()
    if total == 0:
        return 255
    p = histogram / total
    weight0 = np.cumsum(p)
    mean_cumulative = np.cumsum(p * np.arange(256))
    mean_total = mean_cumulative[-1]
    weight1 = 1.0 - weight0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_total * weight0 - mean_cumulative) ** 2 / (weight0 * weight1)
    between[(weight0 <= 0) | (weight1 <= 1e-12)] = -1.0
    if between.max() <= 0:
        return int(np.flatnonzero(histogram)[-1])
    return int(np.argmax(between))


def binarize(posterior: np.ndarray) -> np.ndarray:
    """Each cluster's posterior (K, H, W) > its own Otsu threshold (8-bit quantised) → bool (K, H, W)."""
    levels = quantize(posterior)
    return np.stack([level > otsu_threshold(level) for level in levels])


def foreground_clusters(posterior: np.ndarray, min_peak: int = 64, max_corners: int = 2) -> np.ndarray:
    """Which clusters are parts, judged on one image's posterior (K, H, W) → bool (K,).

    The authors' filter (their ``test.py``, applied to the first training image): threshold each map by
    Otsu computed inside a 10-px margin; drop it if the mask reaches more than ``max_corners`` of the
    four 20×20 corners, or if its 11×11 box blur peaks at ≤ ``min_peak`` (of 255). Sizes scale from 448 px.
    """
    height, width = posterior.shape[-2:]
    scale = min(height, width) / REFERENCE_SIZE
    margin, corner = round(10 * scale), max(1, round(20 * scale))
    blur = max(1, round(11 * scale))
    keep = []
    for level in quantize(posterior):
        inner = level[margin : height - margin, margin : width - margin] if margin else level
        mask = level > otsu_threshold(inner)
        corners = [mask[:corner, :corner], mask[-corner:, :corner], mask[:corner, -corner:], mask[-corner:, -corner:]]
        touched = sum(bool(c.any()) for c in corners)
        peak = int(cv2.blur(level, (blur, blur)).max())
        keep.append(touched <= max_corners and peak > min_peak)
    return np.array(keep, dtype=bool)


@dataclass(frozen=True)
class MaskSettings:
    """Everything that determines the masks (part of the cache key)."""

    num_clusters: int = 5
    image_size: int = REFERENCE_SIZE
    coreset_ratio: float = 0.01
    kmeans_restarts: int = 10
    seed: int = 0
    crf: CRFParams = CRFParams()
    crf_backend: str = "torch"  # resolved ("pydensecrf" | "torch") before it enters a key

    def scaled_crf(self) -> CRFParams:
        """The CRF's pixel widths at ``image_size`` (the authors' are for 448 px)."""
        scale = self.image_size / REFERENCE_SIZE
        return replace(self.crf, gaussian_sxy=self.crf.gaussian_sxy * scale, bilateral_sxy=self.crf.bilateral_sxy * scale)


def fit_centres(features: list[torch.Tensor], settings: MaskSettings) -> torch.Tensor:
    """k-means centres (K, C) from each training image's features (C, h, w): coreset per image, pooled."""
    points = []
    for feature in features:
        tokens = feature.flatten(1).T  # (h·w, C)
        points.append(tokens[greedy_coreset_indices(tokens, settings.coreset_ratio)])
    return kmeans(torch.cat(points), settings.num_clusters, restarts=settings.kmeans_restarts, seed=settings.seed)


def image_posteriors(
    image: np.ndarray, features: torch.Tensor, centres: torch.Tensor, settings: MaskSettings
) -> np.ndarray:
    """CRF posterior (K, S, S) of one image: uint8 RGB (S, S, 3) at ``image_size`` and its features (C, h, w)."""
    probs = cluster_probabilities(cluster_similarity(features[None], centres), image.shape[:2])[0]
    return dense_crf(image, probs, settings.scaled_crf(), backend=settings.crf_backend)
