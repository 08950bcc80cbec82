"""Per-sample list states: DDP-safe syncing and de-duplication by dataset index.

Under DDP, ``DistributedSampler`` pads the last batches with repeated samples so that every process gets
the same number. Metrics that keep per-sample data store each sample's dataset ``index`` and, after the
states are gathered, keep one copy per index (in index order, which also makes the result independent of
how samples were split across processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["ListStateMetric", "unique_sample_order", "cat_state"]


def cat_state(state: Tensor | list[Tensor], dtype: torch.dtype, tail: tuple[int, ...] = ()) -> Tensor:
    """A list state (before sync) or an already concatenated one (after sync) as one tensor."""
    if isinstance(state, Tensor):
        return state
    if len(state) == 0:
        return torch.zeros((0, *tail), dtype=dtype)
    return dim_zero_cat(state)


def batch_index(index: Any, n: int, device: torch.device) -> Tensor:
    """The dataset indices of a batch of ``n`` maps as int64 (N,); ``-1`` for each when none are given."""
    if index is None:
        return torch.full((n,), -1, dtype=torch.int64, device=device)
    idx = torch.as_tensor(index, device=device).reshape(-1).to(torch.int64)
    if idx.numel() != n:
        raise ValueError(f"index has {idx.numel()} entries but the batch has {n} maps")
    return idx


def unique_sample_order(index: Tensor, agree: Sequence[tuple[str, Tensor, float]] = ()) -> Tensor:
    """Positions that keep the first copy of every dataset index, ordered by index.

    Samples with ``index < 0`` (no index given) are never treated as duplicates and keep their order.
    ``agree`` lists ``(what, values, atol)``: copies of one index must carry the same values (within ``atol``),
    otherwise the index is ambiguous and a ``ValueError`` says so; ``values`` is (N,) or (N, D).
    """
    order = torch.sort(index, stable=True).indices
    ordered = index[order]
    first_of_run = torch.ones_like(ordered, dtype=torch.bool)
    first_of_run[1:] = (ordered[1:] != ordered[:-1]) | (ordered[1:] < 0)
    keep = order[first_of_run]
    if keep.numel() == index.numel():
        return keep
    run = torch.cumsum(first_of_run, 0) - 1
    for what, values, atol in agree:
        ref = values[keep][run].double()
        diff = (values[order].double() - ref).abs().reshape(ordered.numel(), -1).amax(1)
        if bool((diff > atol).any()):
            bad = int(ordered[diff > atol][0])
            raise ValueError(
                f"dataset index {bad} was seen twice with different {what}: `index` must identify a sample "
                "uniquely within its category (it is used to drop the duplicates DistributedSampler pads with)"
            )
    return keep


class ListStateMetric(Metric):
    """A torchmetrics ``Metric`` whose list states sync correctly when some process has no data.

    torchmetrics substitutes an empty *float32* tensor for an empty list state, which breaks the gather when
    the state is int64 or 2-D on the other ranks. Subclasses declare their list states with
    :meth:`add_list_state` and get correctly typed empty placeholders.
    """

    full_state_update = True  # forward() must update the accumulated states through update()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._list_specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}

    def add_list_state(self, name: str, dtype: torch.dtype, tail: tuple[int, ...] = ()) -> None:
        self.add_state(name, default=[], dist_reduce_fx="cat")
        self._list_specs[name] = (dtype, tail)

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        for name, (dtype, tail) in self._list_specs.items():
            state = getattr(self, name)
            if isinstance(state, list) and len(state) == 0:
                state.append(torch.zeros((0, *tail), dtype=dtype, device=self.device))
        kwargs: dict[str, Any] = {"process_group": process_group}
        if dist_sync_fn is not None:
            kwargs["dist_sync_fn"] = dist_sync_fn
        super()._sync_dist(**kwargs)
