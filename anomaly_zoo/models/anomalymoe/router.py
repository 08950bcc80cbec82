"""Per-image expert routing (AnomalyMoE, §3 "gating"): an MLP on the last block's CLS token, top-k, softmax.

No noise: the top-k of the raw logits are selected and their softmax is the routing weight; every other
expert gets weight exactly 0. The expert order of the routing vector is [patch…, global…, component…].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    logits: torch.Tensor  # (B, E) raw router logits (ESB's input)
    weights: torch.Tensor  # (B, E) softmax over the selected, 0 elsewhere
    selected: torch.Tensor  # (B, E) bool, exactly k True per row
    indices: torch.Tensor  # (B, k) selected experts, highest logit first


def top_k_routing(logits: torch.Tensor, k: int) -> Routing:
    """Top-``k`` of the raw logits per row; weights = softmax over those ``k``, scattered into (B, E)."""
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"top_k must be between 1 and the number of experts ({logits.shape[1]}), got {k}.")
    top_logits, indices = torch.topk(logits, k, dim=1)
    weights = torch.zeros_like(logits).scatter(1, indices, F.softmax(top_logits, dim=1))
    selected = torch.zeros_like(logits, dtype=torch.bool).scatter(1, indices, True)
    return Routing(logits=logits, weights=weights, selected=selected, indices=indices)


class Router(nn.Module):
    """``gate``: Linear(C→hidden) → ReLU → Linear(hidden→E) on the CLS token (authors' GatingNetwork)."""

    def __init__(self, embed_dim: int, num_experts: int, hidden_dim: int = 256, top_k: int = 3) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and the number of experts ({num_experts}), got {top_k}.")
        self.top_k = top_k
        self.gate = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_experts))

    def forward(self, cls_token: torch.Tensor) -> Routing:
        return top_k_routing(self.gate(cls_token), self.top_k)
