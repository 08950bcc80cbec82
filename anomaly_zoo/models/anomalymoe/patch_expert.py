"""Patch-level expert (Dinomaly-style reconstruction, AnomalyMoE §3.2): bottleneck MLP + linear-attention decoder.

Input: the mean of the 8 encoder taps, all tokens (CLS, registers, patches). The bottleneck (768→3072→768,
GELU) has dropout 0.2 on its input, hidden layer and output; 8 pre-norm blocks (LayerNorm eps 1e-8,
qkv bias, MLP ratio 4, GELU, no other dropout) with *linear attention* over all tokens:
φ = elu + 1,  out_s = φ(q_s)ᵀ Σ_t φ(k_t) v_tᵀ / (φ(q_s) · Σ_t φ(k_t)).
timm has no such attention, hence the small hand-written module; the MLPs are timm's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


class LinearAttention(nn.Module):
    """Multi-head linear attention with the elu+1 feature map, no scaling, no mask (Dinomaly's LinearAttention2)."""

    def __init__(self, dim: int, num_heads: int = 12, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by {num_heads} heads.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = k.transpose(-2, -1) @ v  # (b, h, d, d): Σ_t φ(k_t) v_tᵀ
        normaliser = q @ k.sum(dim=-2).unsqueeze(-1)  # (b, h, n, 1): φ(q_s)·Σ_t φ(k_t)
        out = (q @ kv) / normaliser
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block: x += A(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int = 12, mlp_ratio: float = 4.0, norm_eps: float = 1e-8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = LinearAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Bottleneck(nn.Module):
    """fc1 → GELU → fc2 with dropout on the input, the hidden layer and the output (Dinomaly's bMlp)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.drop(x))))))


class PatchExpert(nn.Module):
    """``bottleneck`` + ``decoder`` (8 blocks). ``forward`` returns every decoder block's output, in block order.

    ``deep_rows`` (indices into the batch) limits the blocks after ``shallow_blocks`` to those rows: the
    EIR draw only needs the first blocks' outputs (group G1) of images not routed to this expert.
    """

    def __init__(
        self, dim: int, depth: int = 8, num_heads: int = 12, mlp_ratio: float = 4.0, bottleneck_ratio: float = 4.0,
        dropout: float = 0.2, norm_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.bottleneck = nn.ModuleList([Bottleneck(dim, int(dim * bottleneck_ratio), dropout)])
        self.decoder = nn.ModuleList([DecoderBlock(dim, num_heads, mlp_ratio, norm_eps) for _ in range(depth)])

    def forward(
        self, tokens: torch.Tensor, deep_rows: torch.Tensor | None = None, shallow_blocks: int = 0
    ) -> list[torch.Tensor]:
        x = tokens
        for block in self.bottleneck:
            x = block(x)
        outputs = []
        for index, block in enumerate(self.decoder):
            if deep_rows is not None and index == shallow_blocks:
                x = x[deep_rows]
            x = block(x)
            outputs.append(x)
        return outputs


# ---- hard-mined reconstruction loss ----------------------------------------------------------------
class _ScaleGradWhere(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor`` where ``mask`` is true."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad * ctx.factor, grad), None, None


def scale_grad_where(x: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged; its gradient is multiplied by ``factor`` where ``mask`` (broadcast to ``x``) holds."""
    return _ScaleGradWhere.apply(x, mask.expand_as(x), factor)


def cosine_distance_map(en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
    """1 − cos over channels, per pixel: (n, C, h, w) × 2 → (n, h, w)."""
    return 1.0 - F.cosine_similarity(en, de, dim=1)


def hard_mined_loss(
    en_groups: list[torch.Tensor],
    de_groups: list[torch.Tensor],
    p: float = 0.9,
    factor: float = 0.1,
    masks: str = "authors",
    threshold_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image patch loss L(b) = mean over groups of the spatial mean of 1 − cos(en_g, de_g); (n,) .

    Hard mining (Dinomaly's, p constant): thr_g = the k-th largest distance, k = int(numel·(1 − p)) over the
    rows ``threshold_rows`` (default: all rows); the gradient into de_g is multiplied by ``factor`` where the
    distance is below thr_g. ``masks="authors"`` applies the LAST group's mask to every group (the closure
    bug of their ``calculate_hm_loss_for_expert``); ``"own"`` gives each group its own mask. ``en`` is detached.
    """
    if masks not in ("authors", "own"):
        raise ValueError(f"hard_mining_masks must be 'authors' or 'own', got '{masks}'.")
    grad_masks = []
    with torch.no_grad():
        for en, de in zip(en_groups, de_groups):
            dist = cosine_distance_map(en, de)
            pool = dist if threshold_rows is None else dist[threshold_rows]
            k = max(int(pool.numel() * (1 - p)), 1)
            thr = torch.topk(pool.reshape(-1), k=k)[0][-1]
            grad_masks.append((dist < thr).unsqueeze(1))
    if masks == "authors":
        grad_masks = [grad_masks[-1]] * len(grad_masks)
    total = 0.0
    for en, de, mask in zip(en_groups, de_groups, grad_masks):
        de = scale_grad_where(de, mask, factor)
        total = total + cosine_distance_map(en.detach(), de).mean(dim=(1, 2))
    return total / len(en_groups)
