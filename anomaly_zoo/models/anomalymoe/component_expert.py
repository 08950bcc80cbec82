"""Component-level expert (AnomalyMoE §3.2): an MLP autoencoder on the mean feature of each component mask.

f_c = Σ(m_c · F) / (Σ m_c + 1e-8), F = the mean-of-8-taps patch feature map, m_c = the component mask
(image resolution) → nearest to the token grid → 5×5 max-pool (a dilation). AE: C→256→64→64 | 64→64→256→C,
ReLU between layers, dropout 0.1 before each decoder linear (layer indices as the authors').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def component_features(
    feature_map: torch.Tensor, masks: torch.Tensor, dilation: int = 5
) -> torch.Tensor:
    """Mean feature under each (dilated, token-grid) mask: (B, C, h, w), (B, K, H, W) → (B, K, C)."""
    grid = feature_map.shape[-2:]
    small = F.interpolate(masks.float(), size=grid, mode="nearest")
    if dilation > 1:
        small = F.max_pool2d(small, kernel_size=dilation, stride=1, padding=(dilation - 1) // 2)
    summed = torch.einsum("bkhw,bchw->bkc", small, feature_map)
    return summed / (small.sum(dim=(2, 3)).unsqueeze(-1) + 1e-8)


class ComponentExpert(nn.Module):
    """``encoder`` C→256→64→64, ``decoder`` 64→64→256→C (dropout before each linear)."""

    def __init__(self, dim: int, hidden_dim: int = 256, inner_dim: int = 64, code_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.ReLU(True), nn.Linear(hidden_dim, inner_dim), nn.ReLU(True),
            nn.Linear(inner_dim, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(code_dim, inner_dim), nn.ReLU(True),
            nn.Dropout(dropout), nn.Linear(inner_dim, hidden_dim), nn.ReLU(True),
            nn.Dropout(dropout), nn.Linear(hidden_dim, dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(features))


def component_distance(reconstruction: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """1 − cos(AE(f_c), f_c) per component; (..., C) → (...)."""
    return 1.0 - F.cosine_similarity(reconstruction, features, dim=-1)
