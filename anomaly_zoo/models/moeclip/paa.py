"""PAA — patch average aggregation (MoECLIP §3.5): every patch averaged over its r×r grid neighbourhood."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_average_aggregation(tokens: torch.Tensor, size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Average each patch token over its ``size``×``size`` neighbourhood; the CLS token (index 0) is untouched.

    ``tokens`` (B, 1 + h·w, D), patches in raster order. Zero padding counts in the divisor (the authors
    unfold with zero padding and take the plain mean), i.e. ``avg_pool2d(count_include_pad=True)``. No
    Gaussian weighting (the authors' Gaussian kernels are never used).
    """
    if size == 1:
        return tokens
    if size % 2 == 0:
        raise ValueError(f"PAA neighbourhood size must be odd, got {size}.")
    h, w = grid
    batch, length, dim = tokens.shape
    if length != 1 + h * w:
        raise ValueError(f"{length} tokens do not fit a CLS token plus a {h}×{w} patch grid.")
    patches = tokens[:, 1:].transpose(1, 2).reshape(batch, dim, h, w)
    pooled = F.avg_pool2d(patches, size, stride=1, padding=size // 2, count_include_pad=True)
    return torch.cat([tokens[:, :1], pooled.reshape(batch, dim, h * w).transpose(1, 2)], dim=1)
