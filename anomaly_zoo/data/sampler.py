"""A distributed sampler for evaluation that never pads: each sample is seen by exactly one rank."""

from __future__ import annotations

from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


class UnrepeatedDistributedSampler(DistributedSampler):
    """Rank ``r`` gets indices ``r, r + world, r + 2·world, …`` — shard sizes may differ by one.

    torch's ``DistributedSampler`` pads the last shard with duplicates so every rank has the same
    length; those duplicates would be counted twice by the metrics. Lightning keeps a sampler that
    is already a ``DistributedSampler``, so returning this one disables its padding.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def eval_sampler(dataset: Dataset) -> UnrepeatedDistributedSampler | None:
    """The non-padding sampler when a process group is running, else ``None`` (sequential)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return UnrepeatedDistributedSampler(dataset)
    return None
