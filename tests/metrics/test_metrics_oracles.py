"""Independent oracles: scikit-learn and torchmetrics, on the same data as our metrics.

The reference tests (``reference.py``) are our own port of the MVTec code; these compare against code we
did not write. scikit-learn's ``roc_auc_score`` / ``average_precision_score`` take raw scores; torchmetrics'
binary metrics are only comparable on scores in [0, 1] (outside it they apply a sigmoid first).
"""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from anomaly_zoo.metrics import ImageAP, ImageAUROC, PixelAP, PixelAUROC, PixelMetrics

from .metrics_testdata import batches, synthetic_set


def _image_set(seed: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbounded raw scores (about -40 .. 90), anomalies shifted up; ``ties`` rounds them to many equal values."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 301)
    labels[:2] = (0, 1)
    scores = rng.normal(20, 25, labels.size) + 15 * labels
    if ties:
        scores = np.round(scores / 10) * 10
    return torch.from_numpy(scores), torch.from_numpy(labels)


def _metric(cls, scores, labels, **kwargs) -> float:
    m = cls(**kwargs)
    for sl in batches(len(scores), 64):
        m.update(scores[sl], labels[sl])
    return float(m.compute())


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_image_metrics_equal_scikit_learn(seed, ties):
    scores, labels = _image_set(seed, ties)
    assert _metric(ImageAUROC, scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert _metric(ImageAP, scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


@pytest.mark.parametrize("mode,tolerance", [("exact", 1e-12), ("streaming", None)])
def test_pixel_metrics_equal_scikit_learn(mode, tolerance):
    maps, masks, _ = synthetic_set(n=10, seed=5, quantum=0.25)  # raw scores in [2, 60], with ties
    y, s = masks.reshape(-1).numpy(), maps.reshape(-1).double().numpy()
    expected = {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s)}
    m = PixelMetrics(mode=mode, with_pro=False)
    for sl in batches(len(maps), 3):
        m.update(maps[sl], masks[sl])
    got = {k: float(v) for k, v in m.compute().items()}
    bounds = m.error_bounds()
    for key, value in expected.items():
        # streaming may differ from the exact value by at most its proven bound (never more)
        allowed = tolerance if tolerance is not None else bounds[key] + 1e-12
        assert abs(got[key] - value) <= allowed, (key, got[key], value, bounds[key])
    assert _metric(PixelAUROC, maps, masks) == pytest.approx(expected["auroc"], abs=1e-12)
    assert _metric(PixelAP, maps, masks) == pytest.approx(expected["ap"], abs=1e-12)


def test_image_metrics_equal_torchmetrics_on_unit_scores():
    scores, labels = _image_set(3, ties=True)
    unit = (scores - scores.min()) / (scores.max() - scores.min())  # [0, 1]: torchmetrics applies no sigmoid
    assert _metric(ImageAUROC, unit, labels) == pytest.approx(float(binary_auroc(unit, labels)), abs=1e-6)
    assert _metric(ImageAP, unit, labels) == pytest.approx(
        float(binary_average_precision(unit, labels)), abs=1e-6
    )


def test_raw_scores_are_not_squashed():
    """Why the suite exists: above ~17, float32 sigmoid is 1.0 for all, torchmetrics sees one big tie."""
    scores, labels = _image_set(0, ties=False)
    high = (scores + 100).float()  # every score > 17
    assert float(binary_auroc(high, labels)) == pytest.approx(0.5)
    assert _metric(ImageAUROC, high, labels) == pytest.approx(roc_auc_score(labels, high.numpy()), abs=1e-9)
