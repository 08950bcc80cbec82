"""UniAD's feature jitter: Gaussian noise scaled to each token's norm, added only while training."""

from __future__ import annotations

import torch
from torch import nn


class FeatureJitter(nn.Module):
    """``f ← f + ε · scale · ‖f_t‖₂ / C`` with ε ~ N(0, 1) per element, on (B, N, C) tokens.

    The norm is taken over the C channels of each token; with probability ``prob`` per batch (one draw for the
    whole batch, as the authors do) the noise is added, otherwise the batch passes unchanged. Its expected norm
    is about ``scale / sqrt(C)`` times the token's norm (≈ 1.21 for scale 20 and C = 272). Identity in eval mode.
    """

    def __init__(self, scale: float = 20.0, prob: float = 1.0) -> None:
        super().__init__()
        if scale < 0:
            raise ValueError(f"jitter scale must be ≥ 0, got {scale}.")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"jitter probability must be in [0, 1], got {prob}.")
        self.scale = scale
        self.prob = prob

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.jitter(tokens) if self.training else tokens

    def jitter(self, tokens: torch.Tensor) -> torch.Tensor:
        """Add the noise regardless of the mode (still subject to ``prob``)."""
        if self.scale == 0 or self.prob == 0:
            return tokens
        # The coin is drawn on the CPU generator so a CUDA run does not synchronise for it.
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return tokens
        channels = tokens.shape[-1]
        norms = tokens.norm(dim=-1, keepdim=True) / channels
        return tokens + torch.randn_like(tokens) * norms * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}, prob={self.prob}"
