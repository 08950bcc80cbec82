"""StableAdamW as the authors run it (their ``optimizers/StableAdamW.py``, a fork of torch's AdamW).

Hand-written because the maintained implementation (``torch-optimi``'s StableAdamW) is a different
algorithm: it has no AMSGrad and clips with RMS(g²/v) per tensor, while the authors use AMSGrad and divide
the step by max(1, RMS(g / denom) / clip_threshold), with denom = √(v̂_max / bias2) + eps. Per tensor:

    p ← p·(1 − lr·wd);  m, v EMAs;  v̂ = max(v̂, v);  denom = √v̂/√(1−β₂ᵗ) + eps
    p ← p − lr / (1−β₁ᵗ) / max(1, RMS(g / denom) / clip) · m / denom
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer


class StableAdamW(Optimizer):
    """AdamW with decoupled weight decay, optional AMSGrad and the update-RMS clip of the authors' code."""

    def __init__(
        self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 1e-2, amsgrad: bool = False, clip_threshold: float = 1.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid StableAdamW settings: lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}.")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        clip_threshold=clip_threshold)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = exp_avg_sq
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                bias1 = 1 - beta1 ** state["step"]
                bias2 = 1 - beta2 ** state["step"]
                denom = (second.sqrt() / math.sqrt(bias2)).add_(group["eps"])
                rms = (grad / denom).norm(2) / math.sqrt(grad.numel())
                scale = max(1.0, float(rms) / group["clip_threshold"])
                p.addcdiv_(exp_avg, denom, value=-group["lr"] / bias1 / scale)
        return loss


def warm_cosine_factor(step: int, total: int, warmup: int, base: float, final: float) -> float:
    """The authors' WarmCosineScheduler as a multiplier of ``base``: linspace(0, base, warmup) then a cosine to
    ``final`` over the remaining ``total − warmup`` iterations; ``final`` after ``total``."""
    if step >= total:
        return final / base
    if step < warmup:
        return (step / (warmup - 1) if warmup > 1 else 1.0)
    i, n = step - warmup, max(total - warmup, 1)
    return (final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))) / base
