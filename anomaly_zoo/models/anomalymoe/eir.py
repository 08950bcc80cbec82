"""Expert Information Repulsion (AnomalyMoE §3.3): a CLUB upper bound on the mutual information of two experts.

CLUB(x→y) = mean_b Σ_d [(μ(x) − y_π)² − (μ(x) − y)²] / (2·e^{s(x)}), π a random permutation of the batch;
μ: MLP C→C/2→C, s: the same MLP followed by tanh (the "log-variance"). Features are passed through a shared
trainable LayerNorm first. EIR = ½(CLUB_patch + CLUB_global), minimised by the experts; the estimator is
trained separately to maximise the conditional log-likelihood of y given x.

The authors' likelihood is −Σ_d (μ − y)² / (2e^s) without the +s/2 of a Gaussian NLL, so s is pushed to its
tanh bound (1); ``with_log_variance=True`` adds the term (a proper Gaussian NLL).
"""

from __future__ import annotations

import torch
from torch import nn


class CLUBSample(nn.Module):
    """Variational q(y|x) = N(μ(x), e^{s(x)}) for the CLUB bound (Cheng et al., ICML 2020)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.p_mu = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim))
        self.p_logvar = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim), nn.Tanh())

    def upper_bound(self, x: torch.Tensor, y: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.p_mu(x), self.p_logvar(x)
        positive = -(mu - y) ** 2 / logvar.exp()
        negative = -(mu - y[permutation]) ** 2 / logvar.exp()
        return (positive.sum(dim=-1) - negative.sum(dim=-1)).mean() / 2.0

    def nll(self, x: torch.Tensor, y: torch.Tensor, with_log_variance: bool = False) -> torch.Tensor:
        """The estimator's training loss: −mean_b log q(y|x) (up to constants)."""
        mu, logvar = self.p_mu(x), self.p_logvar(x)
        per_dim = (mu - y) ** 2 / 2.0 / logvar.exp()
        if with_log_variance:
            per_dim = per_dim + logvar / 2.0
        return per_dim.sum(dim=1).mean(dim=0)


class EIREstimator(nn.Module):
    """``normalizer`` (shared LayerNorm) + one CLUB estimator for a patch-expert pair, one for a global pair."""

    def __init__(self, dim: int, with_log_variance: bool = False) -> None:
        super().__init__()
        self.normalizer = nn.LayerNorm(dim)
        self.patch_estimator = CLUBSample(dim)
        self.global_estimator = CLUBSample(dim)
        self.with_log_variance = with_log_variance

    def _pairs(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        for family, estimator in (("patch", self.patch_estimator), ("global", self.global_estimator)):
            if family in features:
                x, y = features[family]
                yield estimator, self.normalizer(x), self.normalizer(y)

    def eir(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]], generator: torch.Generator | None = None,
            frozen: bool = True) -> torch.Tensor:
        """EIR = mean over families of CLUB(x→y). ``frozen``: no gradient into the estimator (the experts' step)."""
        params = list(self.parameters())
        flags = [p.requires_grad for p in params]
        if frozen:
            for p in params:
                p.requires_grad_(False)
        try:
            values = []
            for estimator, x, y in self._pairs(features):
                perm = torch.randperm(x.shape[0], generator=generator, device="cpu").to(x.device)
                values.append(estimator.upper_bound(x, y, perm))
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        if not values:
            return torch.zeros((), device=next(iter(self.parameters())).device)
        return torch.stack(values).mean()

    def estimator_loss(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean over families of the NLL of y given x, on detached expert features (the estimator's step)."""
        values = [est.nll(x, y, self.with_log_variance)
                  for est, x, y in self._pairs({k: (a.detach(), b.detach()) for k, (a, b) in features.items()})]
        if not values:
            return torch.zeros((), device=next(iter(self.parameters())).device)
        return torch.stack(values).mean()
