"""The simplex-ETF expert-diversity loss (MoECLIP §3.4, Eq. for L_ETF)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def etf_target(num_experts: int, device=None, dtype=None) -> torch.Tensor:
    """The Gram matrix of a simplex equiangular tight frame: 1 on the diagonal, −1/(K−1) off it."""
    target = torch.full((num_experts, num_experts), -1.0 / (num_experts - 1), device=device, dtype=dtype)
    return target.fill_diagonal_(1.0)


def etf_loss(expert_outputs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over tokens and all K² entries of (Gram − T)², Gram of the L2-normalised outputs of ALL experts.

    ``expert_outputs`` (T, K, D): every expert's output for every token (scaled, after dropout). Zero outputs
    give 1/3 for K = 4 (normalising a zero vector gives zero: Gram = 0). K = 1 gives 0.
    """
    num_experts = expert_outputs.shape[1]
    if num_experts <= 1:
        return expert_outputs.new_zeros(())
    unit = F.normalize(expert_outputs, p=2, dim=-1, eps=eps)
    gram = unit @ unit.transpose(1, 2)
    return (gram - etf_target(num_experts, unit.device, unit.dtype)).pow(2).mean()
