"""Exact pixel metrics under DDP (2 CPU processes, gloo): states gathered to rank 0 ONLY, results shared.

Each rank records the pixels its exact store ranks while computing: rank 0 ranks every rank's maps, rank 1
none (it never receives another rank's maps); both return the single-process table bit for bit.
The transfer is cut into tiny messages (``CHUNK_ELEMENTS`` = 100, parts of uneven sizes) so the chunking is
exercised; the local states are restored after ``compute`` (updating and computing again still matches, also
when a rank updated only one of the categories in between: no cached child skips the sync); an
error on rank 0 (no pixels at all) is raised on every rank instead of leaving rank 1 waiting.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import anomaly_zoo.metrics.root_gather as root_gather
from anomaly_zoo.metrics import AUPRO, AnomalyMetrics
from anomaly_zoo.metrics.pixel_exact import ExactPixelStore

from .metrics.metrics_testdata import synthetic_set
from .metrics.test_metrics_ddp import free_port

N = 9  # uneven: rank 0 gets 5 images, rank 1 gets 4


def feed(metrics: AnomalyMetrics, indices: list[int], batch_size: int) -> None:
    maps, masks, labels = synthetic_set(n=N, seed=5)
    for start in range(0, len(indices), batch_size):
        idx = torch.tensor(indices[start : start + batch_size])
        metrics.update({"anomaly_map": maps[idx].unsqueeze(1), "pred_score": maps[idx].flatten(1).amax(1)},
                       {"mask": masks[idx].unsqueeze(1), "label": labels[idx],
                        "category": ["a" if int(i) % 2 else "b" for i in idx], "index": idx})


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        root_gather.CHUNK_ELEMENTS = 100
        ranked_pixels: list[int] = []
        original = ExactPixelStore.ranked

        def recording(store: ExactPixelStore):
            ranked_pixels.append(sum(int(t.numel()) for t in store.metric.maps))
            return original(store)

        ExactPixelStore.ranked = recording  # type: ignore[method-assign]
        shard = list(range(N))[rank::world]
        metrics = AnomalyMetrics(["a", "b"], pixel_mode="exact")
        feed(metrics, shard[:3], batch_size=2)
        first = metrics.compute()
        feed(metrics, shard[3:], batch_size=1)  # the local states were restored: accumulation goes on
        second = metrics.compute()
        local_after = sum(int(t.numel()) for p in metrics.pixel for t in p.maps)
        error = None
        try:
            AUPRO(mode="exact").compute()  # no pixels on any rank: rank 0 raises, and so must rank 1
        except ValueError as caught:
            error = str(caught)
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(
            {"first": first, "second": second, "ranked_pixels": ranked_pixels, "local_after": local_after,
             "error": error}))
    finally:
        dist.destroy_process_group()


def single(indices: list[int]):
    metrics = AnomalyMetrics(["a", "b"], pixel_mode="exact")
    feed(metrics, indices, batch_size=3)
    return metrics.compute()


@pytest.mark.timeout(240)
def test_exact_states_go_to_rank_0_only_and_every_rank_returns_the_single_process_table(tmp_path: Path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    h, w = synthetic_set(n=1, seed=5)[0].shape[1:]
    first_images = sorted(list(range(N))[0::2][:3] + list(range(N))[1::2][:3])
    for got in ranks:
        assert got["first"].equals(single(first_images))
        assert got["second"].equals(single(list(range(N))))
        assert got["error"] is not None and "received no pixels" in got["error"]
    # One ranking per category (a, b) and compute, then the empty AUPRO's, all on rank 0.
    assert ranks[0]["ranked_pixels"] == [3 * h * w, 3 * h * w, 4 * h * w, 5 * h * w, 0]  # 6 images, then 9
    assert ranks[1]["ranked_pixels"] == []  # it ranks nothing: it only receives the result
    assert ranks[0]["local_after"] == 5 * h * w and ranks[1]["local_after"] == 4 * h * w
