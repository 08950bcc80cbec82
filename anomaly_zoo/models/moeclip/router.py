"""The per-token top-k router of a MoE adapter layer (MoECLIP §3.2): p = softmax(G x), top-k, renormalised."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    """Router output for T tokens: ``probs`` (T, K) over all experts, ``weights`` and ``experts`` (T, k)."""

    probs: torch.Tensor
    weights: torch.Tensor
    experts: torch.Tensor

    def expert_counts(self, num_experts: int) -> torch.Tensor:
        """How many routing slots (token, rank) each expert received: (K,) int64, summing to T·k."""
        return torch.bincount(self.experts.reshape(-1), minlength=num_experts)


class TopKRouter(nn.Module):
    """p = softmax(G x) with G (K × width, no bias, zero-initialised); each token takes its k most probable
    experts with weights w = p / Σ_top-k p.

    Ties (every token at start-up: G = 0 gives p = 1/K) go to the LOWER expert index: a stable descending
    sort, the same on every device. ``torch.topk`` leaves ties unspecified (the authors' CPU run picks experts
    2 and 3 for every token); at start-up the experts' outputs are all zero, so the choice changes only which
    experts receive the first gradients, not any output.
    """

    def __init__(self, width: int, num_experts: int = 4, top_k: int = 2) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}.")
        self.num_experts = num_experts
        self.top_k = top_k
        self.gate = nn.Linear(width, num_experts, bias=False)
        nn.init.zeros_(self.gate.weight)

    def forward(self, tokens: torch.Tensor) -> Routing:
        """``tokens`` (T, width) → :class:`Routing`; probabilities in fp32 like the authors'."""
        probs = torch.softmax(self.gate(tokens).float(), dim=-1)
        ranked, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        top, experts = ranked[:, : self.top_k], order[:, : self.top_k]
        return Routing(probs=probs, weights=top / top.sum(dim=-1, keepdim=True), experts=experts)
