"""Evaluation sharding under DDP: Lightning's ``UnrepeatedDistributedSampler`` (no padding), plus a filler for a
rank that would get no sample at all.

torch's ``DistributedSampler`` pads the last shard with repeated samples so every rank has the same length;
those would be counted twice by the metrics. Lightning's ``UnrepeatedDistributedSampler`` shards without
padding (rank ``r`` gets ``r, r + world, …``) and Lightning keeps a sampler that is already a
``DistributedSampler``. It refuses a rank without samples (an assertion), and Lightning refuses a loader of
length 0 on one rank when others have batches; with fewer samples than ranks (a tiny validation split on 8
GPUs) the empty ranks therefore get ONE filler sample: index ``-1``, which ``AnomalyDataset`` reads as the
last sample with ``index`` -1, and which the evaluation loop drops before the metrics (``is_filler``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, DistributedSampler, Sampler

#: The index the filler sample carries (``Batch["index"]``); real samples have indices ≥ 0.
FILLER_INDEX = -1


class FillerSampler(DistributedSampler):
    """One filler index for a rank whose shard is empty (the batch runs every collective, counts nothing).

    A ``DistributedSampler`` so that Lightning keeps it as it is (it wraps any other sampler in its own).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        return iter([FILLER_INDEX])

    def __len__(self) -> int:
        return 1



def eval_sampler(dataset: Dataset, num_replicas: int | None = None,
                 rank: int | None = None) -> Sampler[int] | None:
    """The sampler of an evaluation loader: ``None`` (sequential) without a process group, else rank ``rank``'s
    unpadded shard, or the filler when that shard is empty."""
    if num_replicas is None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        num_replicas, rank = dist.get_world_size(), dist.get_rank()
    length = len(dataset) if isinstance(dataset, Sized) else 0
    if length and rank >= length:
        return FillerSampler(dataset, num_replicas, rank)
    return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


def is_filler(batch: dict) -> torch.Tensor | None:
    """Boolean (B,) mask of the filler samples of a batch, or None when there is none (the usual case)."""
    index = batch.get("index")
    if not isinstance(index, torch.Tensor):
        return None
    filler = index < 0
    return filler if bool(filler.any()) else None
