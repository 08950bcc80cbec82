"""A per-position diagonal Gaussian on frozen CNN features (a PaDiM-style baseline without projection).

It has no trainable weights: "training" accumulates each feature position's mean and variance over
the normal training images; the anomaly map is the standardised distance to them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.components.backbone import TimmFeatureExtractor


class FeatureDistanceModel(nn.Module):
    """Frozen multi-level features → per-position Gaussian statistics → distance map.

    Args:
        backbone: timm model name; ``layers``: its ``features_only`` stage indices.
        pretrained / backbone_weights: pretrained weights from the timm cache or a local file.
        eps: variance floor, so positions that never vary in training do not divide by zero.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: tuple[int, ...] = (1, 2),
        pretrained: bool = True,
        backbone_weights: str | None = None,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.extractor = TimmFeatureExtractor(backbone, tuple(layers), pretrained, backbone_weights)
        self.eps = eps
        # Float64 sums: the variance from sums of squares cancels badly in float32.
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("feature_sum", torch.empty(0, dtype=torch.float64))
        self.register_buffer("feature_sq_sum", torch.empty(0, dtype=torch.float64))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Stage features resized to the first tap's grid and concatenated: (B, C, h, w)."""
        levels = self.extractor(images)
        size = levels[0].shape[-2:]
        levels = [levels[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in levels[1:]]
        return torch.cat(levels, dim=1)

    @torch.no_grad()
    def accumulate(self, images: torch.Tensor) -> None:
        features = self.features(images).double()
        if self.feature_sum.numel() == 0:
            self.feature_sum = torch.zeros_like(features[0])
            self.feature_sq_sum = torch.zeros_like(features[0])
        self.count += features.shape[0]
        self.feature_sum += features.sum(0)
        self.feature_sq_sum += (features**2).sum(0)

    def reset_statistics(self) -> None:
        """Forget the accumulated statistics (the start of a new pass)."""
        self.count.zero_()
        self.feature_sum = self.feature_sum.new_empty(0)
        self.feature_sq_sum = self.feature_sq_sum.new_empty(0)

    def reduce_statistics(self, reduce: Callable[[torch.Tensor, str], torch.Tensor]) -> None:
        """Sum the statistics of every rank's shard. ``reduce(tensor, "sum" | "max")`` is a collective over the
        ranks (every rank calls it, in the same order); a rank whose shard was empty takes part with zeros."""
        empty = self.feature_sum.numel() == 0
        shape = torch.tensor([0, 0, 0] if empty else list(self.feature_sum.shape), device=self.count.device)
        shape = reduce(shape, "max")  # the grid of the ranks that saw images
        if empty:
            self.feature_sum = torch.zeros(shape.tolist(), dtype=torch.float64, device=self.count.device)
            self.feature_sq_sum = torch.zeros_like(self.feature_sum)
        self.count = reduce(self.count, "sum")
        self.feature_sum = reduce(self.feature_sum, "sum")
        self.feature_sq_sum = reduce(self.feature_sq_sum, "sum")

    @property
    def fitted(self) -> bool:
        return bool(self.count > 0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.fitted:
            raise RuntimeError("FeatureDistanceModel has no statistics yet: fit it on normal images first.")
        features = self.features(images)
        if features.shape[1:] != self.feature_sum.shape:
            raise ValueError(
                f"Feature grid {tuple(features.shape[1:])} differs from the fitted statistics "
                f"{tuple(self.feature_sum.shape)}: evaluate at the image size the model was fitted at."
            )
        mean = self.feature_sum / self.count
        var = (self.feature_sq_sum / self.count - mean**2).clamp_min(0) + self.eps
        distance = ((features.double() - mean) ** 2 / var).mean(1, keepdim=True).sqrt().float()
        anomaly_map = F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {"anomaly_map": anomaly_map, "pred_score": anomaly_map.flatten(1).amax(1)}
