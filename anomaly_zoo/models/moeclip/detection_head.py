"""The image-level detection head (MoECLIP §3.5): a conv adapter over the last level's patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DetectionHead(nn.Module):
    """LayerNorm → depthwise conv1d (kernel 3, zero "same" padding, along the raster token sequence) → GELU →
    pointwise conv → L2-normalise per token → mean over tokens (not re-normalised) = d.

    Input: the last level's patch tokens after ``ln_post``, CLS dropped, (B, L, width). Output (B, out_dim).
    The convolution runs along the 1-D raster order, as the authors' (neighbours across row ends included).
    """

    def __init__(self, width: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.depthwise = nn.Conv1d(width, width, kernel_size, padding="same", groups=width, bias=False)
        self.pointwise = nn.Conv1d(width, out_dim, 1, bias=False)
        nn.init.xavier_uniform_(self.depthwise.weight)
        nn.init.xavier_uniform_(self.pointwise.weight)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(patch_tokens).transpose(1, 2)
        x = self.pointwise(F.gelu(self.depthwise(x))).transpose(1, 2)
        return F.normalize(x, dim=-1).mean(dim=1)
