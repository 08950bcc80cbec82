"""The set-level post-processing hook of ``AnomalyModule``: epoch-end scores equal a brute-force computation."""

from __future__ import annotations

import os
import socket

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader

from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.metrics import AnomalyMetrics
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.components.set_level import SetLevelBuffer
from anomaly_zoo.models.components.upsample import resize_map


class MinMaxToy(AnomalyModule):
    """Map = channel mean pooled to 8×8; the set-level protocol min-max normalises it over the category and
    fuses 0.5·max(map) + 0.5·(normalised channel-0 mean)."""

    set_statistics = ("grid", "brightness")

    def __init__(self, stream_map: bool, transductive: bool = True) -> None:
        super().__init__(pixel_metrics="exact")
        self.stream_map = stream_map
        self.transductive = transductive
        self.finish_calls = 0

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.mean(1, keepdim=True), 8)

    def predict_anomaly(self, images):
        grid = self.grid(images)
        return {"anomaly_map": grid, "pred_score": grid.flatten(1).amax(1)}

    def set_level_protocol(self) -> bool:
        return self.transductive

    def predict_set_statistics(self, images):
        grid = self.grid(images)
        out = {"set_stats": {"grid": grid[:, 0], "brightness": images[:, 0].mean((1, 2))}}
        if self.stream_map:
            out["anomaly_map"] = grid
        return out

    def finish_set(self, set_stats, ranges):
        self.finish_calls += 1
        (lo, hi), (blo, bhi) = ranges["grid"], ranges["brightness"]
        grid = (set_stats["grid"] - lo) / (hi - lo)
        bright = (set_stats["brightness"] - blo) / (bhi - blo)
        return {"pred_score": 0.5 * grid.flatten(1).amax(1) + 0.5 * bright, "anomaly_map": grid[:, None]}

    def protocol_caption(self) -> str:
        return "transductive: min-max over each category's test set" if self.transductive else ""


@pytest.fixture(scope="module")
def test_set():
    datamodule = SyntheticDataModule(category=["stripes", "pill"], image_size=32, num_train=2, num_val=2, num_test=10)
    datamodule.setup("test")
    return datamodule.test_dataset


def brute_force(test_set) -> pd.DataFrame:
    """Every image at once, normalised per category by hand, into one exact AnomalyMetrics."""
    toy = MinMaxToy(stream_map=False)
    batch = next(iter(DataLoader(test_set, batch_size=len(test_set))))
    grid = toy.grid(batch["image"])[:, 0]
    bright = batch["image"][:, 0].mean((1, 2))
    scores, maps = torch.empty(len(test_set)), torch.empty_like(grid)
    for category in set(batch["category"]):
        rows = torch.tensor([c == category for c in batch["category"]])
        g, b = grid[rows], bright[rows]
        maps[rows] = (g - g.min()) / (g.max() - g.min())
        b = (b - b.min()) / (b.max() - b.min())
        scores[rows] = 0.5 * maps[rows].flatten(1).amax(1) + 0.5 * b
    metrics = AnomalyMetrics(test_set.categories, pixel_mode="exact")
    metrics.update({"anomaly_map": resize_map(maps[:, None], (32, 32)), "pred_score": scores}, batch)
    return metrics.compute()


@pytest.mark.parametrize("stream_map", [False, True])
def test_epoch_end_scores_equal_the_brute_force_computation(test_set, stream_map, tmp_path):
    model = MinMaxToy(stream_map=stream_map)
    model.results_dir = str(tmp_path)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.test(model, dataloaders=DataLoader(test_set, batch_size=3))  # batches straddle categories
    expected = brute_force(test_set)
    # Deferred maps: the same numbers. Streamed raw maps: pixel metrics are invariant to the per-category
    # affine min-max, so again the same up to float rounding.
    pd.testing.assert_frame_equal(model.results["test"], expected, check_exact=False, rtol=1e-6)
    assert model.finish_calls == 2  # one chunk per category
    assert "transductive" in (tmp_path / "test_results.md").read_text()


def test_without_the_protocol_the_per_image_rule_runs(test_set, tmp_path):
    model = MinMaxToy(stream_map=False, transductive=False)
    model.results_dir = str(tmp_path)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.test(model, dataloaders=DataLoader(test_set, batch_size=4))
    assert model.finish_calls == 0
    # The per-image score (max of the raw map) differs from the fused one: the tables must differ.
    assert not np.isclose(model.results["test"].loc["mean", "I-AUROC"], brute_force(test_set).loc["mean", "I-AUROC"])


def test_buffer_keeps_masks_bit_packed_and_restores_them_exactly():
    buffer = SetLevelBuffer(["a", "b"], ["s"], keep_masks=True)
    masks = (torch.rand(5, 1, 7, 9) > 0.5).to(torch.uint8)
    buffer.add({"s": torch.arange(5.0)}, {"label": torch.tensor([0, 1, 1, 0, 1]), "category": list("ababa"),
                                         "mask": masks, "index": torch.arange(5)})
    seen: list = []
    buffer.finish(lambda stats, ranges: {"pred_score": stats["s"], "anomaly_map": torch.zeros(len(stats["s"]), 1, 7, 9),
                                         "r": ranges["s"]},
                  lambda output, batch: seen.append((output, batch)), chunk_size=2)
    restored = {int(i): m for _, b in seen for i, m in zip(b["index"], b["mask"])}
    for i in range(5):
        assert torch.equal(restored[i], masks[i])
    by_category = {b["category"][0]: o["pred_score"] for o, b in seen}
    assert by_category["a"].tolist() == [4.0] and by_category["b"].tolist() == [1.0, 3.0]  # last chunk of each


def _ranges_worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    buffer = SetLevelBuffer(["a", "b"], ["s"], keep_masks=False)
    if rank == 0:  # rank 1 never sees category "b": it must still join the reduction
        buffer.add({"s": torch.tensor([[1.0, 5.0], [2.0, -3.0]])},
                   {"label": torch.tensor([0, 1]), "category": ["a", "b"]})
    else:
        buffer.add({"s": torch.tensor([[9.0, 0.5]])}, {"label": torch.tensor([1]), "category": ["a"]})
    ranges = buffer.ranges()
    queue.put((rank, {c: tuple(float(x) for x in r["s"]) for c, r in ranges.items()}))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ranges_are_reduced_over_ddp_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ranges_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=100) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert results[0] == results[1] == {"a": (0.5, 9.0), "b": (-3.0, 2.0)}
