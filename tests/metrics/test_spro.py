"""sPRO / AU-sPRO (MVTec LOCO AD definition) on hand-worked cases, against PRO, and streaming vs exact.

Hand-worked values: a curve point per operating point (descending scores), FPR = fp / normal pixels,
y = mean over defects of min(tp / saturation, 1); the area is the trapezoid up to the limit / limit.
"""

from __future__ import annotations

import pickle
import socket
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anomaly_zoo.metrics import aupro_score
from anomaly_zoo.metrics.spro import SPRO, pack_defect_regions, spro_curve, spro_pixel_weights, spro_score
from anomaly_zoo.metrics.validation import MetricUndefinedWarning

from .metrics_testdata import synthetic_set


def row(scores, defects, saturation):
    """One 1×W image: ``defects`` lists each defect's pixel positions, ``saturation`` their areas."""
    scores = torch.tensor([scores], dtype=torch.float32)[None]  # (1, 1, W)
    masks = np.zeros((len(defects), 1, scores.shape[-1]), bool)
    for k, pixels in enumerate(defects):
        masks[k, 0, pixels] = True
    regions = pack_defect_regions(masks)[None]  # (1, 1, W)
    return scores, regions, torch.tensor([saturation], dtype=torch.float64)


# Defect pixels 0..3 score 8, 6, 4, 2; normal pixels 4..7 score 7, 5, 3, 1: tp and fp alternate, so the
# area up to FPR 1 is 0.25 * (y1 + y2 + y3 + y4) with y_k = min(k / s, 1).
ALTERNATING = [8, 6, 4, 2, 7, 5, 3, 1]


@pytest.mark.parametrize(
    ("saturation", "limit", "expected"),
    [
        (4.0, 1.0, 0.25 * (0.25 + 0.5 + 0.75 + 1.0)),  # s = area: plain PRO, 0.625
        (2.0, 1.0, 0.25 * (0.5 + 1.0 + 1.0 + 1.0)),  # below saturation at tp = 1, saturated from tp = 2
        (2.5, 1.0, 0.25 * (0.4 + 0.8 + 1.0 + 1.0)),  # fractional saturation (a resized mask)
        (4.0, 0.5, (0.25 + 0.5) / 2),  # cut at FPR 0.5, divided by 0.5
        (2.0, 0.5, (0.5 + 1.0) / 2),
        (2.0, 0.375, (0.25 * 0.5 + 0.125 * 1.0) / 0.375),  # the limit falls inside a horizontal run
    ],
)
def test_one_defect_below_and_above_saturation(saturation, limit, expected):
    scores, regions, sat = row(ALTERNATING, [[0, 1, 2, 3]], [saturation])
    assert spro_score(scores, regions, sat, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_curve_points_of_one_saturated_defect():
    scores, regions, sat = row(ALTERNATING, [[0, 1, 2, 3]], [2.0])
    fpr, y = spro_curve(scores, regions, sat)
    # (0,0), then per operating point: tp -> y, fp -> FPR; y stays 1 once two pixels are found
    assert fpr.tolist() == pytest.approx([0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0])
    assert y.tolist() == pytest.approx([0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_two_defects_one_saturated_early():
    # A = pixels {0, 2} scoring 8 and 4, saturation 1; B = pixels {1, 3} scoring 6 and 2, saturation 2.
    scores, regions, sat = row([8, 6, 4, 2, 7, 5, 3, 1], [[0, 2], [1, 3]], [1.0, 2.0])
    # mean y after each tp: 8 -> (1 + 0)/2, 6 -> (1 + .5)/2, 4 -> unchanged (A saturated), 2 -> 1
    assert spro_score(scores, regions, sat, fpr_limit=1.0) == pytest.approx(0.25 * (0.5 + 0.75 + 0.75 + 1.0))
    # with both saturations at the defect area it is PRO: 0.25 * (.25 + .5 + .75 + 1)
    _, _, full = row([0] * 8, [[0, 2], [1, 3]], [2.0, 2.0])
    assert spro_score(scores, regions, full, fpr_limit=1.0) == pytest.approx(0.625)


def test_overlapping_defects_are_separate_regions():
    # A = {0, 1}, B = {1, 2} share pixel 1; scores 5, 4, 3; normal pixels 4.5, 2, 1.
    scores, regions, sat = row([5, 4, 3, 4.5, 2, 1], [[0, 1], [1, 2]], [2.0, 2.0])
    # 5 -> (.5 + 0)/2 = .25; 4.5 -> FPR 1/3; 4 -> (1 + .5)/2; 3 -> 1: area 1/3 * .25 + 2/3 * 1
    assert spro_score(scores, regions, sat, fpr_limit=1.0) == pytest.approx(0.25 / 3 + 2 / 3)
    _, weights, n_defects = spro_pixel_weights(scores[:, 0], regions[:, 0], sat)
    assert weights.tolist() == pytest.approx([0.5, 1.0, 0.5]) and int(n_defects[0]) == 2  # pixel 1: .5 + .5
    # the union as one 3-pixel region (connected-component PRO) would give 1/3 * 1/3 + 2/3
    assert aupro_score(scores, regions != 0, fpr_limit=1.0) == pytest.approx(1 / 9 + 2 / 3)


def test_logical_and_structural_splits_share_the_good_images():
    # good: normal pixels 3, 1. structural: defect 2 (sat 1), normal 0. logical: defect 0.5, normal 4.
    maps = torch.tensor([[[3.0, 1.0]], [[2.0, 0.0]], [[0.5, 4.0]]])
    regions = torch.tensor([[[0, 0]], [[1, 0]], [[1, 0]]])
    sat = torch.tensor([[0.0], [1.0], [1.0]], dtype=torch.float64)
    metric = SPRO(fpr_limit=1.0)
    metric.update(maps, regions, sat, split=torch.tensor([0, 1, 2]))
    out = {k: float(v) for k, v in metric.compute().items()}
    # structural: normals 3, 1, 0 and the defect at 2 -> (1/3, 0) -> (1/3, 1): area 2/3
    assert out["spro_structural_anomalies"] == pytest.approx(2 / 3)
    # logical: normals 4, 3, 1 all score above the defect at 0.5: area 0
    assert out["spro_logical_anomalies"] == pytest.approx(0.0)
    assert out["spro"] == pytest.approx(1 / 3)  # official mean of the two splits
    assert out["n_images"] == 3 and out["spro_bound"] == 0.0


def test_spro_equals_pro_when_every_saturation_is_the_full_area():
    maps, masks, _ = synthetic_set(n=10, seed=3)
    regions = torch.zeros(masks.shape, dtype=torch.int64)
    saturation = torch.zeros(len(masks), 8, dtype=torch.float64)
    for i in range(len(masks)):  # every 8-connected component is one defect, saturated at 100 % of its area
        n, labels, stats, _ = cv2.connectedComponentsWithStats(masks[i].numpy(), connectivity=8)
        for k in range(n - 1):
            regions[i][torch.from_numpy(labels == k + 1)] |= 1 << k
            saturation[i, k] = float(stats[k + 1, cv2.CC_STAT_AREA])
    for limit in (0.05, 0.3, 1.0):
        assert spro_score(maps, regions, saturation, limit) == pytest.approx(
            aupro_score(maps, masks, limit), abs=1e-12
        )


def random_loco_set(n=12, h=20, w=18, seed=0, quantum=None):
    """Maps, bit-packed defects (1-3 per anomalous image, may overlap), saturation areas and split codes."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, h, w)).astype(np.float32)
    regions = torch.zeros(n, h, w, dtype=torch.int64)
    sat = torch.zeros(n, 4, dtype=torch.float64)
    split = torch.tensor([i % 3 for i in range(n)])
    for i in range(n):
        if split[i] == 0:
            continue
        masks = np.zeros((int(rng.integers(1, 4)), h, w), bool)
        for k in range(len(masks)):
            r, c = rng.integers(0, h - 4), rng.integers(0, w - 4)
            masks[k, r : r + rng.integers(2, 7), c : c + rng.integers(2, 7)] = True
            maps[i] += masks[k] * rng.uniform(0, 2)
            sat[i, k] = max(1.0, float(masks[k].sum()) * rng.choice([1.0, 0.5, 0.2]))
        regions[i] = pack_defect_regions(masks)
    maps = torch.from_numpy(np.round(maps / quantum) * quantum if quantum else maps).float()
    return maps, regions, sat, split


def evaluate(mode, data, order=None, batch=5, **kwargs):
    maps, regions, sat, split = data
    metric = SPRO(mode=mode, **kwargs)
    order = list(range(len(maps))) if order is None else order
    for s in range(0, len(order), batch):
        idx = torch.tensor(order[s : s + batch])
        metric.update(maps[idx], regions[idx], sat[idx], split[idx], index=idx)
    return metric, {k: float(v) for k, v in metric.compute().items()}


@pytest.mark.parametrize("quantum", [None, 0.25])
@pytest.mark.parametrize("num_bins", [32, 1024, 2**16])
def test_streaming_equals_exact_within_its_bound(num_bins, quantum):
    data = random_loco_set(seed=num_bins, quantum=quantum)
    _, exact = evaluate("exact", data, fpr_limit=0.3)
    _, stream = evaluate("streaming", data, fpr_limit=0.3, num_bins=num_bins)
    for key in ("spro_structural_anomalies", "spro_logical_anomalies", "spro"):
        assert abs(stream[key] - exact[key]) <= stream[f"{key}_bound"] + 1e-12
        assert exact[f"{key}_bound"] == 0.0
    if num_bins == 2**16 and quantum is None:
        assert stream["spro_bound"] < 1e-3  # the bound is tight enough to be useful
    if num_bins == 32:
        assert stream["spro_bound"] > 0  # and it is not trivially zero


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_result_does_not_depend_on_batch_order_or_duplicates(mode):
    data = random_loco_set(seed=5)
    _, reference = evaluate(mode, data)
    _, shuffled = evaluate(mode, data, order=[5, 3, 11, 0, 1, 2, 4, 6, 10, 9, 8, 7], batch=4)
    assert shuffled == reference
    if mode == "exact":  # a padded DistributedSampler repeat is dropped by index
        _, padded = evaluate(mode, data, order=[*range(12), 0, 1])
        assert padded["spro"] == reference["spro"]


def test_input_errors_and_undefined_splits():
    scores, regions, sat = row(ALTERNATING, [[0, 1]], [0.0])
    with pytest.raises(ValueError, match="saturation area"):
        spro_score(scores, regions, sat)
    with pytest.raises(ValueError, match="integer bit mask"):
        spro_score(scores, regions.float(), sat)
    with pytest.raises(ValueError, match="split code 0"):
        SPRO().update(scores, regions, torch.ones(1, 1), split=torch.tensor([0]))
    metric = SPRO()
    scores, regions, sat = row(ALTERNATING, [[0, 1]], [2.0])
    metric.update(scores, regions, sat, split=torch.tensor([1]))  # structural only
    with pytest.warns(MetricUndefinedWarning, match="logical_anomalies"):
        out = metric.compute()
    assert float(out["spro"]) == float(out["spro_structural_anomalies"])  # mean over the splits present


# ---- DDP: two gloo processes give the single-process result ------------------------------------------
def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        data = random_loco_set(seed=9)
        mine = list(range(12))[rank::world]
        padded = mine + ([0] if rank == 1 else [])  # a DistributedSampler-style repeat
        ranked_pixels: list[int] = []  # map pixels each exact ranking sees on this rank
        original = SPRO._ranked_exact

        def recording(metric: SPRO, split: int):
            ranked_pixels.append(sum(int(t.numel()) for t in metric.maps))
            return original(metric, split)

        SPRO._ranked_exact = recording  # type: ignore[method-assign]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = {
                "exact": evaluate("exact", data, order=padded, batch=2)[1],
                "streaming": evaluate("streaming", data, order=mine, batch=2)[1],
            }
        results["ranked_pixels"] = ranked_pixels
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_process_gloo_equals_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    data = random_loco_set(seed=9)
    single = {mode: evaluate(mode, data)[1] for mode in ("exact", "streaming")}
    for rank in range(2):
        got = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        # Exact maps are gathered to rank 0 only: rank 0 ranks them, rank 1 never does.
        ranked = got.pop("ranked_pixels")
        assert (len(ranked) > 0 and min(ranked) > 0) if rank == 0 else ranked == []
        assert got["streaming"] == single["streaming"]
        assert got["exact"].pop("n_images") == 13  # counts what it was given; the value drops the repeat
        assert got["exact"] == {k: v for k, v in single["exact"].items() if k != "n_images"}
