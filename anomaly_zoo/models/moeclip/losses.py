"""MoECLIP's segmentation losses (the authors' focal + dice, as in AA-CLIP/AnomalyCLIP)."""

from __future__ import annotations

import torch


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Mean over all B·H·W pixels of −(1 − pt)^γ · log pt; pt = Σ_c target_c·p_c + smooth with the one-hot
    target clamped to [smooth, 1 − smooth]; no α. ``probs`` (B, 2, H, W) softmax output, ``mask`` (B, 1, H, W)."""
    target = torch.cat([1 - mask, mask], dim=1).float().clamp(smooth, 1 - smooth)
    pt = (target * probs).sum(dim=1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − batch mean of the per-image soft Dice (2Σpq + 1)/(Σp + Σq + 1)."""
    pred, target = pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1).to(pred.dtype)
    dice = (2 * (pred * target).sum(1) + 1) / (pred.sum(1) + target.sum(1) + 1)
    return 1 - dice.mean()


def segmentation_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """focal(p, m) + dice(p_normal, 1 − m) + dice(p_anomalous, m) for one map."""
    mask = mask.float()
    return focal_loss(probs, mask) + dice_loss(probs[:, 0], 1 - mask) + dice_loss(probs[:, 1], mask)
