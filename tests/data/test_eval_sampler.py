"""The evaluation sampler never pads: across ranks every index is seen exactly once."""

from __future__ import annotations

import pytest

from anomaly_zoo.data.sampler import UnrepeatedDistributedSampler, eval_sampler


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("length", [1, 7, 10, 11])
def test_shards_cover_every_index_once(world_size, length):
    dataset = list(range(length))
    shards = [
        list(UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=r))
        for r in range(world_size)
    ]
    merged = sorted(i for shard in shards for i in shard)
    assert merged == list(range(length))  # nothing missing, nothing duplicated (no padding)
    sizes = [
        len(UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=r)) for r in range(world_size)
    ]
    assert sizes == [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_order_is_deterministic_across_epochs():
    sampler = UnrepeatedDistributedSampler(list(range(9)), num_replicas=2, rank=1)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first == [1, 3, 5, 7]


def test_no_sampler_without_a_process_group():
    assert eval_sampler(list(range(5))) is None
