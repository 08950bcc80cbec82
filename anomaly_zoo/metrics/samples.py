"""Per-sample list states: DDP-safe syncing and de-duplication by dataset index.

Under DDP, ``DistributedSampler`` pads the last batches with repeated samples so that every process gets
the same number. Metrics that keep per-sample data store each sample's dataset ``index`` and, after the
states are gathered, keep one copy per index (in index order, which also makes the result independent of
how samples were split across processes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from anomaly_zoo.metrics.root_gather import gather_to_root, root_result

T = TypeVar("T")

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

    List states named in :attr:`root_states` (every map of an exact metric) are gathered to rank 0 only
    (:mod:`~anomaly_zoo.metrics.root_gather`), not to every rank: a subclass computes from them through
    :meth:`_on_root` (rank 0 computes, every rank gets the result).
    """

    full_state_update = True  # forward() must update the accumulated states through update()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._list_specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}

    @property
    def root_states(self) -> tuple[str, ...]:
        """List states that, under DDP, go to rank 0 only; none by default."""
        return ()

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
        root = self.root_states
        if not root:
            super()._sync_dist(**kwargs)
            return
        reductions = self._reductions
        self._reductions = {k: v for k, v in reductions.items() if k not in root}  # torchmetrics syncs the rest
        try:
            super()._sync_dist(**kwargs)
        finally:
            self._reductions = reductions
        gathered = gather_to_root({name: getattr(self, name) for name in root},
                                  {name: self._list_specs[name] for name in root}, process_group or self.process_group)
        for name, full in gathered.items():
            setattr(self, name, [] if full is None else [full])

    def _copy_state_dict(self) -> dict[str, Any]:
        # The unsync cache: root states are replaced at sync, never changed in place, so the cache keeps the
        # same tensors instead of torchmetrics' clone (one more copy of every map).
        root = set(self.root_states)
        if not root:
            return super()._copy_state_dict()
        cache = {name: list(getattr(self, name)) for name in root}
        for name in self._defaults:
            if name not in root:
                value = getattr(self, name)
                cache[name] = value.detach().clone() if isinstance(value, Tensor) else [
                    v.detach().clone() if isinstance(v, Tensor) else v for v in value]
        return cache

    def _on_root(self, fn: Callable[[], T]) -> T:
        """``fn()``; on states gathered to rank 0 only, run there and broadcast (every rank gets the same)."""
        if self._is_synced and self.root_states:
            return root_result(fn, self.process_group)
        return fn()

    def _synced(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on states synced across processes (like ``compute``)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return self._on_root(fn)
