"""Two-process CPU DDP (gloo): synced results equal single-process results exactly.

Rank 1 receives a padded duplicate from the default DistributedSampler; image metrics and exact pixel
metrics drop it by index. Streaming pixel metrics need a non-padding split (and warn otherwise).
"""

import pickle
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from anomaly_zoo.metrics import AUPRO, AnomalyMetrics, ImageAUROC

from .metrics_testdata import synthetic_set

N = 11  # odd: DistributedSampler pads rank 1 with a copy of sample 0
CATEGORIES = ["a", "b", "c"]


def sample_category(i: int) -> str:
    return "c" if i in (4, 8) else ("a" if i % 3 else "b")  # "c" only ever reaches rank 0


def dataset():
    maps, masks, labels = synthetic_set(n=N, seed=21)
    labels[4], labels[8] = 0, 1
    masks[4] = 0
    return maps, masks, labels


def evaluate(indices, pixel_mode, batch_size):
    maps, masks, labels = dataset()
    collection = AnomalyMetrics(CATEGORIES, pixel_mode=pixel_mode)
    image, aupro = ImageAUROC(), AUPRO(mode="exact")
    for start in range(0, len(indices), batch_size):
        idx = torch.tensor(indices[start : start + batch_size])
        output = {"anomaly_map": maps[idx].unsqueeze(1), "pred_score": maps[idx].flatten(1).amax(1)}
        batch = {
            "mask": masks[idx].unsqueeze(1),
            "label": labels[idx],
            "category": [sample_category(int(i)) for i in idx],
            "index": idx,
        }
        collection.update(output, batch)
        image.update(output["pred_score"], batch["label"], idx)
        aupro.update(output["anomaly_map"], batch["mask"], idx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = collection.compute()
    repeated = any("repeated" in str(w.message) for w in caught)
    return {
        "table": table,
        "details": collection.details,
        "image_auroc": float(image.compute()),
        "aupro": float(aupro.compute()),
        "warned_repeated": repeated,
    }


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        padded = list(DistributedSampler(range(N), num_replicas=world, rank=rank, shuffle=False))
        split = list(range(N))[rank::world]  # non-padding split, uneven sizes
        results = {
            "padded": padded,
            "exact_padded": evaluate(padded, "exact", batch_size=2),
            "streaming_split": evaluate(split, "streaming", batch_size=2),
            "streaming_padded": evaluate(padded, "streaming", batch_size=4),
        }
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    assert ranks[1]["padded"][-1] == 0 and 0 in ranks[0]["padded"]  # a duplicate really was evaluated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single_exact = evaluate(list(range(N)), "exact", batch_size=3)
        single_stream = evaluate(list(range(N)), "streaming", batch_size=3)
    for got in ranks:  # every rank returns the synced result
        exact = got["exact_padded"]
        assert exact["table"].equals(single_exact["table"])
        assert exact["image_auroc"] == single_exact["image_auroc"]
        assert exact["aupro"] == single_exact["aupro"]
        stream = got["streaming_split"]
        assert stream["table"].equals(single_stream["table"])
        assert stream["details"].equals(single_stream["details"])
        assert not stream["warned_repeated"]
        assert got["streaming_padded"]["warned_repeated"]  # documented limitation, never silent
    assert list(single_exact["table"].index) == ["a", "b", "c", "mean"]
