"""Image-level AUROC / AP / F1-max: hand-worked cases, reference agreement, invariances, dedupe."""

import math
import warnings

import numpy as np
import pytest
import torch

from anomaly_zoo.metrics import ImageAP, ImageAUROC, ImageF1Max, ImageMetrics, MetricUndefinedWarning
from anomaly_zoo.metrics.curves import rank_ties, trapezoid

from .reference import (
    reference_auroc,
    reference_average_precision,
    reference_f1_max,
    reference_trapezoid,
)


def image_values(scores, labels, index=None):
    m = ImageMetrics()
    m.update(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels), index)
    return {k: float(v) for k, v in m.compute().items()}


def test_hand_worked_case():
    # descending: 0.8(+) 0.4(-) 0.35(+) 0.1(-)
    v = image_values([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert v["auroc"] == pytest.approx(0.75, abs=1e-12)  # 3 of 4 (pos, neg) pairs ordered right
    assert v["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)
    assert v["f1max"] == pytest.approx(0.8, abs=1e-12)  # at 0.35: TP 2, FP 1 -> 4 / (2 + 1 + 2)
    assert v["f1max_threshold"] == pytest.approx(0.35, abs=1e-7)


def test_ties_count_one_half():
    # positives {1, 3}, negatives {1, 2}: 3>1, 3>2, 1=1 (1/2), 1<2 -> 2.5 / 4
    assert image_values([1, 1, 2, 3], [0, 1, 0, 1])["auroc"] == pytest.approx(0.625, abs=1e-12)
    # all tied: one operating point, AUROC 1/2
    assert image_values([5, 5, 5, 5], [0, 1, 0, 1])["auroc"] == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(np.int64)
    scores = np.round(rng.normal(size=300) + labels, 1).astype(np.float32)  # many ties
    v = image_values(scores, labels)
    assert v["auroc"] == pytest.approx(reference_auroc(scores, labels), abs=1e-12)
    assert v["ap"] == pytest.approx(reference_average_precision(scores, labels), abs=1e-12)
    f1, thr = reference_f1_max(scores, labels)
    assert v["f1max"] == pytest.approx(f1, abs=1e-12)
    assert v["f1max_threshold"] == thr


def test_unbounded_scores_are_never_squashed():
    # Distances of 20-60 (and 1e4): a sigmoid in float32 would map all of them to 1.0, one big tie.
    normal = torch.tensor([20.0, 25.0, 30.0, 35.0])
    anomalous = torch.tensor([40.0, 55.0, 60.0, 1e4])
    assert torch.sigmoid(torch.cat([normal, anomalous])).unique().numel() == 1  # the trap
    m = ImageAUROC()
    m.update(torch.cat([normal, anomalous]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert float(m.compute()) == 1.0


def test_monotone_transforms_leave_metrics_unchanged():
    rng = np.random.default_rng(3)
    labels = torch.from_numpy((rng.random(200) < 0.4).astype(np.int64))
    scores = torch.from_numpy(rng.normal(size=200)) + labels
    base = image_values(scores, labels)
    for transformed in (torch.exp(scores.double()), 1000 * scores.double() + 5, torch.atan(scores.double())):
        m = ImageMetrics()
        m.update(transformed, labels)
        v = {k: float(x) for k, x in m.compute().items()}
        for key in ("auroc", "ap", "f1max"):
            assert v[key] == pytest.approx(base[key], abs=1e-12)


def test_perfect_and_inverted_scores():
    assert image_values([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])["auroc"] == 1.0
    v = image_values([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert v["auroc"] == 0.0  # no "if auc < 0.5: 1 - auc" shortcut


def test_single_metric_classes_and_threshold():
    scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    for cls, expected in ((ImageAUROC, 0.75), (ImageAP, 5 / 6), (ImageF1Max, 0.8)):
        m = cls()
        m.update(scores[:2], labels[:2])
        m.update(scores[2:], labels[2:])
        out = m.compute()
        assert out.shape == () and float(out) == pytest.approx(expected, abs=1e-7)
    f1 = ImageF1Max()
    f1.update(scores, labels)
    f1.compute()
    assert f1.threshold == pytest.approx(0.35, abs=1e-7)


def test_duplicates_dropped_by_index():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    ref = image_values(scores, labels, torch.arange(4))
    m = ImageMetrics()
    m.update(scores, labels, torch.arange(4))
    m.update(scores[:2], labels[:2], torch.arange(2))  # DistributedSampler-style padding
    got = {k: float(v) for k, v in m.compute().items()}
    assert got == ref and got["n_samples"] == 4


def test_ambiguous_index_is_an_error():
    m = ImageMetrics()
    m.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    m.update(torch.tensor([0.2]), torch.tensor([1]), torch.tensor([0]))  # same index, other label
    with pytest.raises(ValueError, match="index 0"):
        m.compute()


def test_one_class_only_is_nan_with_warning():
    m = ImageAUROC()
    m.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    with pytest.warns(MetricUndefinedWarning, match="AUROC"):
        assert math.isnan(float(m.compute()))


def test_empty_is_an_error():
    m = ImageAUROC()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' own "compute before update"
        with pytest.raises(ValueError, match="no samples"):
            m.compute()


def test_reset_and_forward():
    m = ImageAUROC()
    m.update(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]))
    m.reset()
    batch_value = m(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))  # forward = update + batch value
    assert float(batch_value) == 1.0 and float(m.compute()) == 1.0


def test_trapezoid_matches_reference_rule():
    x = torch.tensor([0.0, 0.1, 0.1, 0.25, 0.4, 1.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.2, 0.5, 0.6, 0.9, 1.0], dtype=torch.float64)
    for x_max in (None, 0.05, 0.1, 0.3, 0.4, 1.0):
        assert trapezoid(x, y, x_max) == pytest.approx(
            reference_trapezoid(x.numpy(), y.numpy(), x_max), abs=1e-15
        )
    with pytest.raises(ValueError):
        trapezoid(x[1:], y[1:], 0.05)


def test_ranked_counts_merge_negative_runs_only():
    scores = torch.tensor([9.0, 8.0, 7.0, 7.0, 6.0, 5.0, 4.0, 3.0])
    labels = torch.tensor([0, 0, 1, 0, 0, 1, 0, 0]).bool()
    counts = rank_ties(scores, scores[labels])
    assert counts.thresholds.tolist() == [8.0, 7.0, 6.0, 5.0, 3.0]
    assert counts.neg.tolist() == [2, 1, 1, 0, 2] and counts.pos.tolist() == [0, 1, 0, 1, 0]
    assert counts.neg.dtype == counts.pos.dtype == torch.int64
