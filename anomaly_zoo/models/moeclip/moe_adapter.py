"""The MoE adapter layer after a frozen CLIP block (MoECLIP §3.2–3.3): routed LoRA experts + residual mixing.

Why not ``peft``: its LoRA layers wrap an existing ``nn.Linear`` and add ``B A x`` to that layer's output for
every token. Here there is no wrapped layer (the experts' sum is mixed into the residual stream after a whole
block, with a norm rescale), each token uses a different, data-dependent subset of experts with router
weights, A is a fixed FOFS draw, and the ETF loss needs every expert's output per token. None of that is
expressible with a ``LoraConfig``/``LoraLayer``; the experts are three small tensors written out plainly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.moeclip.fofs import fofs_down_projections
from anomaly_zoo.models.moeclip.router import Routing, TopKRouter


@dataclass
class MoEOutput:
    """``hidden`` (B, N, D): tokens after the mixing; ``routing`` for the T = B·N tokens; ``expert_outputs``
    (T, K, D) every expert's output per token when asked for (the ETF loss), else ``None``."""

    hidden: torch.Tensor
    routing: Routing
    expert_outputs: torch.Tensor | None


class MoEAdapter(nn.Module):
    """K LoRA experts e_i(x) = (α/r)·B_i A_i dropout(x), a top-k router, and the residual mixing

        y = Σ_top-k w_k e_k(x),   x ← λ·y·‖x‖/(‖y‖ + 1e-6) + (1 − λ)·x      (per-token L2, λ = ``mix_weight``).

    A (K, r, D) is the frozen FOFS draw (a buffer: saved in the checkpoint, never trained) or, with
    ``fofs=False``, a trainable Kaiming-uniform matrix as in plain LoRA. B (K, D, r) starts at zero, so the
    first step gives y = 0 and x ← (1 − λ)x: the initial model is not the frozen CLIP (as in the paper).

    The routed sum is computed densely as one matmul over all K·r codes with the unselected experts' weights
    set to zero — exactly Σ_top-k, without gathering per-expert token subsets.
    """

    def __init__(
        self,
        width: int,
        num_experts: int = 4,
        rank: int = 8,
        alpha: float = 16.0,
        top_k: int = 2,
        dropout: float = 0.05,
        mix_weight: float = 0.1,
        fofs: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.width, self.num_experts, self.rank = width, num_experts, rank
        self.scaling = alpha / rank
        self.dropout = dropout
        self.mix_weight = mix_weight
        self.fofs = fofs
        self.router = TopKRouter(width, num_experts, top_k)
        if fofs:
            self.register_buffer("down", fofs_down_projections(width, num_experts, rank, generator))
        else:
            down = torch.empty(num_experts, rank, width)
            for i in range(num_experts):
                nn.init.kaiming_uniform_(down[i], a=math.sqrt(5))
            self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(num_experts, width, rank))

    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """A_i dropout(x) for every expert: (T, K, r).

        With FOFS each expert reads only its own input block, so ONE dropout mask over x gives every expert
        an independent mask on the dims it sees — the same distribution as the authors' per-expert dropout.
        Dense A (``fofs=False``) needs one mask per expert.
        """
        if self.training and self.dropout > 0 and not self.fofs:
            dropped = F.dropout(tokens.unsqueeze(1).expand(-1, self.num_experts, -1), self.dropout, True)
            return torch.einsum("tkd,krd->tkr", dropped, self.down)
        if self.training and self.dropout > 0:
            tokens = F.dropout(tokens, self.dropout, True)
        flat = tokens @ self.down.reshape(self.num_experts * self.rank, self.width).T
        return flat.reshape(-1, self.num_experts, self.rank)

    def forward(self, hidden: torch.Tensor, return_expert_outputs: bool = False) -> MoEOutput:
        """``hidden`` (B, N, D) — all tokens, CLS included."""
        shape = hidden.shape
        tokens = hidden.reshape(-1, self.width)
        routing = self.router(tokens)
        codes = self.codes(tokens) * self.scaling
        # Router weights scattered onto all K experts (zero where not selected).
        dense_weights = torch.zeros_like(routing.probs).scatter(1, routing.experts, routing.weights).to(codes.dtype)
        up_all = self.up.permute(1, 0, 2).reshape(self.width, self.num_experts * self.rank)  # (D, K·r)
        mixed = (codes * dense_weights.unsqueeze(-1)).reshape(tokens.shape[0], -1) @ up_all.T
        rescaled = mixed * tokens.norm(dim=-1, keepdim=True) / (mixed.norm(dim=-1, keepdim=True) + 1e-6)
        out = self.mix_weight * rescaled + (1 - self.mix_weight) * tokens
        expert_outputs = torch.einsum("tkr,kdr->tkd", codes, self.up) if return_expert_outputs else None
        return MoEOutput(hidden=out.reshape(shape), routing=routing, expert_outputs=expert_outputs)
