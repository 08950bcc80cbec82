"""Pixel AUROC / AP / F1-max and PRO / AUPRO in exact mode: hand-worked cases and the MVTec reference."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomaly_zoo.metrics import (
    AUPRO,
    MetricUndefinedWarning,
    PixelAP,
    PixelAUROC,
    PixelF1Max,
    PixelMetrics,
    aupro_score,
    pro_curve,
)
from anomaly_zoo.metrics.pro import defect_pixels

from .metrics_testdata import batches, synthetic_set
from .reference import (
    reference_aupro,
    reference_auroc,
    reference_average_precision,
    reference_f1_max,
    reference_pro_curve,
)

# 2 x 4 image, two regions: A = {(0,0), (0,1)} and B = {(1,3)}; five normal pixels.
HAND_MASK = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 1]]], dtype=torch.uint8)
HAND_MAP = torch.tensor([[[0.9, 0.5, 0.7, 0.1], [0.2, 0.3, 0.6, 0.8]]])
# Descending: 0.9 (A) PRO 1/4 | 0.8 (B) PRO 3/4 | 0.7, 0.6 normal -> FPR 0.4 | 0.5 (A) PRO 1 | rest normal.
# Curve (0,0) (0,.25) (0,.75) (.2,.75) (.4,.75) (.4,1) (.6,1) (.8,1) (1,1).


def exact(cls, maps, masks, **kw):
    m = cls(mode="exact", **kw)
    m.update(maps, masks)
    return float(m.compute())


@pytest.mark.parametrize(
    ("limit", "expected"), [(0.3, 0.75), (0.5, 0.8), (1.0, 0.9), (0.2, 0.75), (0.4, 0.75)]
)
def test_hand_worked_aupro(limit, expected):
    # area up to 0.3: 0.75 * 0.3 -> / 0.3 = 0.75; up to 0.5: 0.75 * 0.4 + 1 * 0.1 = 0.4 -> / 0.5 = 0.8
    assert exact(AUPRO, HAND_MAP, HAND_MASK, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_hand_worked_pixel_metrics():
    # positives {0.9, 0.8, 0.5} vs negatives {0.7, 0.6, 0.3, 0.2, 0.1}: 5 + 5 + 3 of 15 pairs
    assert exact(PixelAUROC, HAND_MAP, HAND_MASK) == pytest.approx(13 / 15, abs=1e-12)
    # precision at the positives: 1/1, 2/2, 3/5
    assert exact(PixelAP, HAND_MAP, HAND_MASK) == pytest.approx((1 + 1 + 0.6) / 3, abs=1e-12)
    f1 = PixelF1Max()
    f1.update(HAND_MAP, HAND_MASK)
    assert float(f1.compute()) == pytest.approx(0.8, abs=1e-12)  # at 0.8: 2 TP, 0 FP -> 4 / (2 + 3)
    assert f1.threshold == pytest.approx(0.8, abs=1e-7)
    fpr, pro = pro_curve(HAND_MAP, HAND_MASK)
    assert pro.tolist() == pytest.approx([0, 0.25, 0.75, 0.75, 1, 1, 1])  # collinear points merged
    assert fpr.tolist() == pytest.approx([0, 0, 0, 0.4, 0.4, 1, 1])


def test_regions_are_8_connected():
    # A diagonal pair is ONE region (MVTec reference: 3x3 structure of ones), plus a one-pixel region.
    mask = torch.zeros(1, 5, 5, dtype=torch.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 4, 4] = 1
    amap = torch.zeros(1, 5, 5)
    amap[0, 0, 0] = 1.0  # only (0,0) is found at the top threshold
    fpr, pro = pro_curve(amap, mask)
    assert float(pro[1]) == pytest.approx(0.25)  # (1/2 + 0) / 2 regions; 4-connectivity would give 1/3
    _, weights, n_regions = defect_pixels(amap, mask)
    assert n_regions == 2 and weights.tolist() == [0.5, 0.5, 1.0]  # 1/|region| per defect pixel


def test_region_weights_equal_scipy_labelling():
    """The labelling AUPRO uses (``defect_pixels``, OpenCV on cropped bands) against ``scipy.ndimage.label``."""
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 30, 33)) < 0.35).astype(np.uint8)
    masks[2] = 0  # an image without defects
    masks[4, :5] = 1  # a region touching the top border (the crop starts at row 0)
    scores = torch.from_numpy(rng.random(masks.shape))
    values, weights, n_regions = defect_pixels(scores, torch.from_numpy(masks))
    expected, total = [], 0
    for mask in masks:
        ref, n = ndimage.label(mask, np.ones((3, 3), dtype=int))
        sizes = np.bincount(ref.ravel())
        expected.append(1.0 / sizes[ref[ref > 0]])  # row-major, image-major like defect_pixels
        total += n
    assert n_regions == total
    np.testing.assert_allclose(weights.numpy(), np.concatenate(expected), rtol=1e-15)
    np.testing.assert_array_equal(values.numpy(), scores.numpy()[masks.astype(bool)])


@pytest.mark.parametrize("quantum", [None, 0.5])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_exact_matches_reference(quantum, limit):
    maps, masks, _ = synthetic_set(n=14, seed=1, quantum=quantum)  # incl. one-pixel regions, normal images
    m = PixelMetrics(mode="exact", fpr_limit=limit)
    for sl in batches(len(maps), 4):
        m.update(maps[sl].unsqueeze(1), masks[sl].unsqueeze(1))
    got = {k: float(v) for k, v in m.compute().items()}
    maps_np, masks_np = list(maps.numpy()), list(masks.numpy())
    assert got["aupro"] == pytest.approx(reference_aupro(maps_np, masks_np, limit), abs=1e-6)  # spec: 1e-4
    s, t = maps.numpy().ravel(), masks.numpy().ravel()
    assert got["auroc"] == pytest.approx(reference_auroc(s, t), abs=1e-12)  # spec: 1e-6
    assert got["ap"] == pytest.approx(reference_average_precision(s, t), abs=1e-12)
    f1, thr = reference_f1_max(s, t)
    assert got["f1max"] == pytest.approx(f1, abs=1e-12) and got["f1max_threshold"] == thr


def test_pro_curve_matches_reference_points():
    maps, masks, _ = synthetic_set(n=6, seed=4, quantum=1.0)
    fpr, pro = pro_curve(maps, masks)
    ref_fpr, ref_pro = reference_pro_curve(list(maps.numpy()), list(masks.numpy()))
    # Ours only drops collinear points: each of our points is a reference point (FPR there is float32).
    ref = np.stack([ref_fpr, ref_pro], 1)
    for point in np.stack([fpr.numpy(), pro.numpy()], 1):
        assert np.abs(ref - point).max(1).min() < 1e-6
    assert aupro_score(maps, masks) == pytest.approx(
        reference_aupro(list(maps.numpy()), list(masks.numpy())), abs=1e-7
    )


def test_images_of_different_sizes():
    a_maps, a_masks, _ = synthetic_set(n=4, h=20, w=24, seed=5)
    b_maps, b_masks, _ = synthetic_set(n=4, h=32, w=16, seed=6)
    m = PixelMetrics(mode="exact")
    m.update(a_maps, a_masks)
    m.update(b_maps, b_masks)
    got = {k: float(v) for k, v in m.compute().items()}
    maps_np = list(a_maps.numpy()) + list(b_maps.numpy())
    masks_np = list(a_masks.numpy()) + list(b_masks.numpy())
    assert got["aupro"] == pytest.approx(reference_aupro(maps_np, masks_np), abs=1e-7)
    s = np.concatenate([x.ravel() for x in maps_np])
    t = np.concatenate([x.ravel() for x in masks_np])
    assert got["auroc"] == pytest.approx(reference_auroc(s, t), abs=1e-12)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_constant_map(mode):
    _, masks, _ = synthetic_set(n=6, seed=2)
    const = torch.full(masks.shape, 7.5)
    m = PixelMetrics(mode=mode)
    m.update(const, masks)
    got = {k: float(v) for k, v in m.compute().items()}
    assert got["auroc"] == 0.5
    assert got["aupro"] == pytest.approx(0.15, abs=1e-12)  # the diagonal integrated to 0.3, / 0.3
    assert got["ap"] == pytest.approx(float(masks.double().mean()), abs=1e-12)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_perfect_map(mode):
    _, masks, _ = synthetic_set(n=6, seed=2)
    maps = masks.float() * 40 + 3  # every defect pixel above every normal one
    m = PixelMetrics(mode=mode)
    m.update(maps, masks)
    got = {k: float(v) for k, v in m.compute().items()}
    for key in ("auroc", "ap", "f1max", "aupro"):
        # streaming PRO weights are 2**-40 fixed point: exact to ~1e-11
        assert got[key] == pytest.approx(1.0, abs=1e-12 if mode == "exact" else 1e-10), key


def test_monotone_transforms_leave_aupro_unchanged():
    maps, masks, _ = synthetic_set(n=8, seed=3, quantum=0.25)
    base = exact(AUPRO, maps, masks)
    ranks = torch.unique(maps, return_inverse=True)[1].float()  # strictly increasing, exact in float32
    for transformed in (maps * 4, ranks, ranks * 0.5 - 1000, -1.0 / (ranks + 1)):
        assert exact(AUPRO, transformed, masks) == pytest.approx(base, abs=1e-12)
        assert exact(PixelAUROC, transformed, masks) == pytest.approx(
            exact(PixelAUROC, maps, masks), abs=1e-12
        )


def test_normalised_by_limit_not_last_fpr():
    # A curve whose points jump from FPR 0 to 1: old code dividing by the last FPR <= limit gave > 1.
    mask = torch.tensor([[[1, 0, 0, 0]]], dtype=torch.uint8)
    amap = torch.tensor([[[5.0, 1.0, 1.0, 1.0]]])
    assert exact(AUPRO, amap, mask) == pytest.approx(1.0)
    mask2 = torch.tensor([[[1, 1, 0, 0]]], dtype=torch.uint8)
    amap2 = torch.tensor([[[5.0, 1.0, 1.0, 1.0]]])  # half the region above all normals, half tied with them
    v = exact(AUPRO, amap2, mask2)
    # curve (0,0) (0,.5) (1,1): at FPR .3 PRO is .65 -> area .5*.3 + .15*.3/2 = .1725 -> / .3
    assert v == pytest.approx(0.575, abs=1e-12) and v <= 1.0


def test_accumulation_is_float64_and_counts_are_integers():
    maps, masks, _ = synthetic_set(n=4, seed=0)
    m = AUPRO(mode="exact")
    m.update(maps, masks)
    counts = m.ranked()
    assert counts.pro.dtype == torch.float64
    assert counts.neg.dtype == counts.pos.dtype == torch.int64
    assert float(counts.pro.sum()) == pytest.approx(counts.n_regions, abs=1e-9)


def test_no_defect_region_is_nan_with_warning():
    m = AUPRO(mode="exact")
    m.update(torch.rand(3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.warns(MetricUndefinedWarning, match="no defect region"):
        assert math.isnan(float(m.compute()))
    s = AUPRO(mode="streaming")
    s.update(torch.rand(3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.warns(MetricUndefinedWarning):
        assert math.isnan(float(s.compute()))


def test_exact_mode_drops_repeated_samples():
    maps, masks, _ = synthetic_set(n=6, seed=7)
    ref = PixelMetrics(mode="exact")
    ref.update(maps, masks, torch.arange(6))
    dup = PixelMetrics(mode="exact")
    dup.update(maps[3:], masks[3:], torch.arange(3, 6))
    dup.update(maps, masks, torch.arange(6))
    dup.update(maps[:2], masks[:2], torch.arange(2))  # padding repeats
    a = {k: float(v) for k, v in ref.compute().items() if k != "n_images"}
    b = {k: float(v) for k, v in dup.compute().items() if k != "n_images"}
    assert a == b  # identical, not just close: canonical order by index


def test_curve_method_and_bounds_are_zero_in_exact_mode():
    m = AUPRO(mode="exact")
    m.update(HAND_MAP, HAND_MASK)
    fpr, pro = m.curve()
    assert float(fpr[0]) == 0 and float(pro[-1]) == 1
    assert m.error_bound() == 0.0
