"""FOFS — frozen orthonormal feature subspaces (MoECLIP §3.3): the experts' fixed LoRA down-projections."""

from __future__ import annotations

import torch


def feature_blocks(width: int, num_experts: int) -> list[tuple[int, int]]:
    """Disjoint input blocks [start, end) per expert; the first ``width % K`` blocks are one wider (authors')."""
    base, remainder = divmod(width, num_experts)
    blocks, start = [], 0
    for i in range(num_experts):
        end = start + base + (1 if i < remainder else 0)
        blocks.append((start, end))
        start = end
    return blocks


def fofs_down_projections(
    width: int, num_experts: int = 4, rank: int = 8, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The K frozen down-projections A_i, shape (K, rank, width).

    A_i is zero outside expert i's input block; on it, its ``rank`` rows are orthonormal: the transposed Q of
    the reduced QR decomposition of a (block × rank) standard-normal matrix. Expert i therefore sees only
    block i, and the experts' subspaces are disjoint.
    """
    blocks = feature_blocks(width, num_experts)
    narrowest = min(end - start for start, end in blocks)
    if rank > narrowest:
        raise ValueError(f"LoRA rank {rank} exceeds the {narrowest}-dim input block of an expert "
                         f"(width {width} / {num_experts} experts): FOFS needs rank ≤ block size.")
    down = torch.zeros(num_experts, rank, width)
    for i, (start, end) in enumerate(blocks):
        q, _ = torch.linalg.qr(torch.randn(end - start, rank, generator=generator))
        down[i, :, start:end] = q.T
    return down
