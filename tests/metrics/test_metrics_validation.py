"""Bad input fails early with a message that names the fix (or is a documented NaN)."""

import math
import warnings

import pytest
import torch

from anomaly_zoo.metrics import (
    AUPRO,
    AnomalyMetrics,
    ImageAUROC,
    MetricUndefinedWarning,
    PixelAUROC,
    PixelMetrics,
)


@pytest.fixture(params=["exact", "streaming"])
def mode(request):
    return request.param


def test_map_mask_shape_mismatch(mode):
    m = AUPRO(mode=mode)
    with pytest.raises(ValueError, match="resolution"):
        m.update(torch.rand(2, 1, 16, 16), torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N,H,W\) or \(N,1,H,W\)"):
        m.update(torch.rand(2, 3, 16, 16), torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_nan_and_inf_scores(mode):
    maps = torch.rand(2, 8, 8)
    maps[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        PixelAUROC(mode=mode).update(maps, torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN/inf"):
        ImageAUROC().update(torch.tensor([0.1, float("inf")]), torch.tensor([0, 1]))


def test_masks_must_be_binary(mode):
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, :2] = 255
    with pytest.raises(ValueError, match="mask > 0"):
        AUPRO(mode=mode).update(torch.rand(1, 8, 8), mask)
    with pytest.raises(ValueError, match="only 0 and 1"):
        AUPRO(mode=mode).update(torch.rand(1, 8, 8), torch.full((1, 8, 8), 0.5))
    ok = AUPRO(mode=mode)  # bool and 0./1. float masks are fine
    ok.update(torch.rand(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool))
    ok.update(torch.rand(1, 8, 8), torch.zeros(1, 8, 8))


def test_labels_must_be_binary():
    with pytest.raises(ValueError, match="label"):
        ImageAUROC().update(torch.tensor([0.1, 0.2]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="entries"):
        ImageAUROC().update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        ImageAUROC().update(torch.rand(3, 2), torch.tensor([0, 1, 1]))


def test_empty_test_set(mode):
    m = AUPRO(mode=mode)
    m.update(torch.zeros(0, 8, 8), torch.zeros(0, 8, 8, dtype=torch.uint8))  # an empty batch is a no-op
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="no pixels"):
            m.compute()
        with pytest.raises(ValueError, match="no samples"):
            AnomalyMetrics(["a"], pixel_mode=mode).compute()


def test_no_anomalies_is_documented_nan(mode):
    m = PixelMetrics(mode=mode)
    m.update(torch.rand(3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.warns(MetricUndefinedWarning):
        out = m.compute()
    assert all(math.isnan(float(out[k])) for k in ("auroc", "ap", "f1max", "aupro"))


def test_only_defect_pixels_is_nan(mode):
    m = AUPRO(mode=mode)
    m.update(torch.rand(2, 4, 4), torch.ones(2, 4, 4, dtype=torch.uint8))
    with pytest.warns(MetricUndefinedWarning, match="no normal pixel"):
        assert math.isnan(float(m.compute()))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="mode"):
        AUPRO(mode="approximate")
    with pytest.raises(ValueError, match="fpr_limit"):
        AUPRO(fpr_limit=0.0)
    with pytest.raises(ValueError, match="num_bins"):
        PixelAUROC(mode="streaming", num_bins=4)
    with pytest.raises(ValueError, match="duplicates"):
        AnomalyMetrics(["a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        AnomalyMetrics([])


def test_collection_input_errors():
    m = AnomalyMetrics(["bottle", "cable"])
    out = {"anomaly_map": torch.rand(2, 1, 8, 8), "pred_score": torch.rand(2)}
    batch = {
        "mask": torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        "label": torch.zeros(2, dtype=torch.long),
        "category": ["bottle", "carpet"],
        "index": torch.arange(2),
    }
    with pytest.raises(ValueError, match=r"unknown category \['carpet'\].*\['bottle', 'cable'\]"):
        m.update(out, batch)
    with pytest.raises(KeyError, match="missing .*anomaly_map.* and .*pred_score"):  # either alone is enough
        m.update({}, batch)
    with pytest.raises(ValueError, match="batch size mismatch"):
        m.update({**out, "pred_score": torch.rand(3)}, {**batch, "category": ["bottle", "bottle"]})
