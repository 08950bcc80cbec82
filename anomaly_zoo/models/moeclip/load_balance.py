"""The optional load-balancing loss of the MoE routers: the squared coefficient of variation of importance."""

from __future__ import annotations

import torch


def load_balance_loss(router_probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """cv² of I_e = Σ_tokens p_e: (unbiased std(I) / (mean(I) + eps))². ``router_probs`` (T, K)."""
    importance = router_probs.sum(dim=0)
    return (importance.std() / (importance.mean() + eps)).pow(2)
