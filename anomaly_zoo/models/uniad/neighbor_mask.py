"""UniAD's neighbour mask: a query token may not attend the keys in its own k×k neighbourhood."""

from __future__ import annotations

import torch


def neighbor_mask(height: int, width: int, neighbor_size: int = 7, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (N, N) table, N = height·width, tokens ordered t = h·width + w; ``True`` = key is BLOCKED.

    Query q may not attend key k when ``|h_q − h_k| ≤ s//2`` and ``|w_q − w_k| ≤ s//2`` (s = ``neighbor_size``):
    the s×s window around the query, the query itself included, clipped at the borders. With s = 7 on a 14×14
    grid that blocks 49 keys inside, 28 at the middle of an edge and 16 at a corner. Built in one broadcast
    (the authors rebuild it with four nested Python loops on every forward); callers build it once and cache it.
    """
    if neighbor_size < 1 or neighbor_size % 2 == 0:
        raise ValueError(f"neighbor_size must be a positive odd number, got {neighbor_size}.")
    radius = neighbor_size // 2
    # The most central token is blocked from every key once the window reaches all four borders from it;
    # a fully blocked query row would make attention output zeros (or NaN) without any error.
    if radius >= height // 2 and radius >= width // 2:
        largest = 2 * max(height // 2, width // 2) - 1
        raise ValueError(
            f"neighbor_size {neighbor_size} masks the whole {height}x{width} token grid (the central token could "
            f"attend nothing): use neighbor_size <= {largest}, a larger image_size/feature_size, or "
            "neighbor_size null for no mask."
        )
    rows = torch.arange(height, device=device).repeat_interleave(width)  # h of token t
    cols = torch.arange(width, device=device).repeat(height)  # w of token t
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def additive_mask(blocked: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same table as an additive attention bias: 0 where allowed, −inf where blocked (the authors' form)."""
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(blocked, float("-inf"))
