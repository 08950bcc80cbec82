"""The evaluation sampler never pads: across ranks every index is seen exactly once; an empty shard gets the
filler index (dropped by the evaluation loop) instead of a length-0 loader that Lightning refuses."""

from __future__ import annotations

import pytest
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler

from anomaly_zoo.data.sampler import FILLER_INDEX, eval_sampler


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("length", [1, 2, 7, 10, 11])
def test_shards_cover_every_index_once(world_size, length):
    shards = [list(eval_sampler(list(range(length)), world_size, r)) for r in range(world_size)]
    merged = sorted(i for shard in shards for i in shard if i != FILLER_INDEX)
    assert merged == list(range(length))  # nothing missing, nothing duplicated (no padding)
    assert all(len(shard) >= 1 for shard in shards)  # Lightning refuses an empty loader on one rank
    assert [shard == [FILLER_INDEX] for shard in shards] == [r >= length for r in range(world_size)]
    real = [len([i for i in s if i >= 0]) for s in shards]
    assert max(real) - min(real) <= 1


def test_lightning_sampler_when_every_rank_has_samples():
    sampler = eval_sampler(list(range(9)), 2, 1)
    assert isinstance(sampler, UnrepeatedDistributedSampler)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first == [1, 3, 5, 7]


def test_padding_sampler_would_repeat():
    """What the unpadded sampler avoids: torch's pads rank 1 of 9 samples with index 0 again."""
    assert list(DistributedSampler(list(range(9)), num_replicas=2, rank=1, shuffle=False)) == [1, 3, 5, 7, 0]


def test_no_sampler_without_a_process_group():
    assert eval_sampler(list(range(5))) is None
