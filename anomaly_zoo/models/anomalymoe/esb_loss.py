"""Expert Selection Balancing (AnomalyMoE, §3.3): importance + load + z-loss on the router.

    ESB = E·Σ_j P̄_j²  +  Σ_j max(0, C_j − cap·B/E)²  +  mean(logit²)

P̄_j is the batch mean of the full E-way softmax (differentiable), C_j the number of images that selected
expert j (a count: no gradient), ``cap`` the capacity factor (4). At B = 8, E = 18 the load term is
0.296 for balanced routing (no expert chosen more than twice) and 116.15 when every image picks the same 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def esb_terms(logits: torch.Tensor, selected: torch.Tensor, capacity_factor: float = 4.0) -> dict[str, torch.Tensor]:
    """The three ESB terms and their sum ``total`` for router ``logits`` (B, E) and ``selected`` (B, E) bool."""
    batch_size, num_experts = logits.shape
    mean_probs = F.softmax(logits, dim=1).mean(dim=0)
    importance = num_experts * (mean_probs * mean_probs).sum()
    counts = selected.to(logits.dtype).sum(dim=0)
    over = torch.relu(counts - capacity_factor * batch_size / num_experts)
    load = (over * over).sum()
    z = (logits * logits).mean()
    return {"importance": importance, "load": load, "z": z, "total": importance + load + z}


def esb_loss(logits: torch.Tensor, selected: torch.Tensor, capacity_factor: float = 4.0) -> torch.Tensor:
    """ESB = importance + load + z (see the module docstring)."""
    return esb_terms(logits, selected, capacity_factor)["total"]
