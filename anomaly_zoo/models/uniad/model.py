"""UniAD as a plain ``nn.Module``: images → frozen features → (jitter) → transformer reconstruction → map/score.

No Lightning, no files, no metrics here (see ``lightning.py``). Device-agnostic: every tensor is created on
the input's device (no hard-coded CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.uniad.backbone import UniADBackbone
from anomaly_zoo.models.uniad.feature_jitter import FeatureJitter
from anomaly_zoo.models.uniad.transformer import ReconstructionTransformer


def max_avg_pool_score(anomaly_map: torch.Tensor, pool_size: int = 16) -> torch.Tensor:
    """UniAD's image score: max over ``avg_pool2d(map, pool_size, stride=1, no padding)``; (B, 1, H, W) → (B,).

    Computed separably (rows then columns — the same box mean, 2k instead of k² adds per pixel). A map smaller
    than the window is pooled with a window of the map's size.
    """
    kh, kw = min(pool_size, anomaly_map.shape[-2]), min(pool_size, anomaly_map.shape[-1])
    pooled = F.avg_pool2d(F.avg_pool2d(anomaly_map, (1, kw), stride=1), (kh, 1), stride=1)
    return pooled.flatten(1).amax(dim=1)


#: ``max_pool``: max of the average-pooled map (the paper, MVTec AD); ``mean``: mean of the map (the key metric
#: of the authors' CIFAR-10 configs).
IMAGE_SCORES = ("max_pool", "mean")


class UniADModel(nn.Module):
    """UniAD (You et al., NeurIPS 2022). Defaults are the paper's; see ``UniAD`` (lightning.py) for the options."""

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        taps: Sequence[int] = (1, 5, 9, 21),
        feature_size: int = 14,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        neighbor_size: int | None = 7,
        mask_attentions: Sequence[bool] = (True, True, True),
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        score_pool_size: int = 16,
        image_score: str = "max_pool",
        pretrained: bool = True,
        backbone_weights: str | None = None,
        authors_padding: bool = True,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got '{image_score}'.")
        self.score_pool_size = score_pool_size
        self.image_score = image_score
        self.backbone = UniADBackbone(backbone, taps, feature_size, pretrained, backbone_weights, authors_padding)
        self.jitter = FeatureJitter(jitter_scale, jitter_prob)
        self.reconstruction = ReconstructionTransformer(
            self.backbone.out_channels,
            self.backbone.feature_size,
            hidden_dim,
            num_heads,
            num_encoder_layers,
            num_decoder_layers,
            dim_feedforward,
            dropout,
            neighbor_size,
            tuple(mask_attentions),  # type: ignore[arg-type]
        )

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.backbone.feature_size

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen aligned features (B, C, h, w) — the reconstruction target (no gradient, no jitter)."""
        return self.backbone(images)

    def reconstruct(self, features: torch.Tensor, jitter: bool | None = None) -> torch.Tensor:
        """(B, C, h, w) → reconstructed (B, C, h, w). Jitter (before input_proj) defaults to training mode."""
        b, c, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B, N, C), t = h·W + w
        if self.training if jitter is None else jitter:
            tokens = self.jitter.jitter(tokens)
        recon = self.reconstruction(tokens)
        return recon.transpose(1, 2).reshape(b, c, h, w)

    @staticmethod
    def anomaly_map(features: torch.Tensor, reconstruction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """‖reconstruction − features‖₂ over channels, upsampled to ``size`` (bilinear, align_corners=True)."""
        distance = (reconstruction - features).pow(2).sum(dim=1, keepdim=True).sqrt()
        return F.interpolate(distance, size=size, mode="bilinear", align_corners=True)

    def reconstruction_loss(self, features: torch.Tensor) -> torch.Tensor:
        """The training loss from frozen features (cached or fresh): MSE of the jittered reconstruction."""
        return F.mse_loss(self.reconstruct(features), features)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training: features, reconstruction and the MSE loss. Eval: also the anomaly map and image score."""
        features = self.extract_features(images)
        reconstruction = self.reconstruct(features)
        out = {"features": features, "reconstruction": reconstruction, "loss": F.mse_loss(reconstruction, features)}
        if not self.training:
            out.update(self._map_and_score(features, reconstruction, tuple(images.shape[-2:])))
        return out

    def _map_and_score(self, features, reconstruction, size) -> dict[str, torch.Tensor]:
        anomaly_map = self.anomaly_map(features, reconstruction, size)
        if self.image_score == "mean":
            score = anomaly_map.flatten(1).mean(dim=1)
        else:
            score = max_avg_pool_score(anomaly_map, self.score_pool_size)
        return {"anomaly_map": anomaly_map, "pred_score": score}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Anomaly map (B, 1, H, W) at the input size and image score (B,); never jittered."""
        features = self.extract_features(images)
        reconstruction = self.reconstruct(features, jitter=False)
        return self._map_and_score(features, reconstruction, tuple(images.shape[-2:]))
