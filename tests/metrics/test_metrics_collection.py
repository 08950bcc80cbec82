"""AnomalyMetrics: per-category table, percent values, mean row, reset, reporting helpers."""

import math
import warnings

import pandas as pd
import pytest
import torch

from anomaly_zoo.metrics import (
    AUPRO,
    COLUMNS,
    AnomalyMetrics,
    ImageAUROC,
    MetricUndefinedWarning,
    format_results_table,
    load_results,
    save_results,
)

from .metrics_testdata import synthetic_set


def make_batches(categories, n=8, size=4, seed=0):
    """Batches mixing categories, like a unified multi-class test loader."""
    data = {c: synthetic_set(n=n, seed=seed + i) for i, c in enumerate(categories)}
    items = [(c, j) for j in range(n) for c in categories]  # interleaved
    out = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        maps = torch.stack([data[c][0][j] for c, j in chunk]).unsqueeze(1)
        masks = torch.stack([data[c][1][j] for c, j in chunk]).unsqueeze(1)
        labels = torch.stack([data[c][2][j] for c, j in chunk])
        output = {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}
        batch = {
            "mask": masks,
            "label": labels,
            "category": [c for c, _ in chunk],
            "index": torch.tensor([j for _, j in chunk]),
            "path": ["x"] * len(chunk),
        }
        out.append((output, batch))
    return data, out


def test_table_layout_and_values():
    cats = ["screw", "bottle", "grid"]
    data, batches = make_batches(["bottle", "screw"])
    m = AnomalyMetrics(cats, pixel_mode="exact")
    for output, batch in batches:
        m.update(output, batch)
    df = m.compute()
    assert list(df.columns) == list(COLUMNS)
    assert list(df.index) == ["screw", "bottle", "mean"]  # given order, only categories with data
    for c in ("screw", "bottle"):
        maps, masks, labels = data[c]
        ia = ImageAUROC()
        ia.update(maps.flatten(1).amax(1), labels)
        ap = AUPRO(mode="exact")
        ap.update(maps, masks)
        assert df.loc[c, "I-AUROC"] == pytest.approx(100 * float(ia.compute()), abs=1e-9)
        assert df.loc[c, "AUPRO"] == pytest.approx(100 * float(ap.compute()), abs=1e-9)
        assert df.loc[c, "mAD"] == pytest.approx(df.loc[c, list(COLUMNS[:-1])].mean(), abs=1e-9)
    assert df.loc["mean"].tolist() == pytest.approx(df.loc[["screw", "bottle"]].mean().tolist(), abs=1e-9)
    assert ((df >= 0) & (df <= 100)).all().all()
    assert m.details is not None and {"I-F1max threshold", "P-F1max threshold", "AUPRO bound"} <= set(
        m.details.columns
    )


def test_streaming_default_close_to_exact():
    _, batches = make_batches(["a", "b"], n=10)
    exact, stream = AnomalyMetrics(["a", "b"], pixel_mode="exact"), AnomalyMetrics(["a", "b"])
    for output, batch in batches:
        exact.update(output, batch)
        stream.update(output, batch)
    e, s = exact.compute(), stream.compute()
    assert (e[["I-AUROC", "I-AP", "I-F1max"]] == s[["I-AUROC", "I-AP", "I-F1max"]]).all().all()
    bounds = stream.details
    for col in ("P-AUROC", "P-AP", "P-F1max", "AUPRO"):
        assert ((e[col] - s[col]).abs().drop("mean") <= bounds[f"{col} bound"] + 1e-9).all()


def test_reset_starts_over():
    _, batches = make_batches(["a"], n=6)
    m = AnomalyMetrics(["a"])
    for output, batch in batches:
        m.update(output, batch)
    first = m.compute()
    m.reset()
    _, other = make_batches(["a"], n=6, seed=5)
    for output, batch in other:
        m.update(output, batch)
    second = m.compute()
    m.reset()
    for output, batch in batches:
        m.update(output, batch)
    assert m.compute().equals(first) and not second.equals(first)


def test_undefined_category_is_nan_and_named():
    m = AnomalyMetrics(["good_only", "mixed"], pixel_mode="exact")
    _, batches = make_batches(["mixed"], n=4)
    for output, batch in batches:
        m.update(output, batch)
    m.update(
        {"anomaly_map": torch.rand(2, 1, 8, 8), "pred_score": torch.rand(2)},
        {
            "mask": torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
            "label": torch.zeros(2, dtype=torch.long),
            "category": ["good_only"] * 2,
            "index": torch.arange(2),
        },
    )
    with pytest.warns(MetricUndefinedWarning, match=r"\[good_only\]"):
        df = m.compute()
    assert math.isnan(df.loc["good_only", "I-AUROC"]) and math.isnan(df.loc["good_only", "mAD"])
    assert math.isnan(df.loc["mean", "mAD"]) and not math.isnan(df.loc["mixed", "mAD"])


def test_streaming_warns_about_repeated_samples():
    _, batches = make_batches(["a"], n=4)
    m = AnomalyMetrics(["a"])
    for output, batch in batches + batches[:1]:  # the first batch again, same indices
        m(output, batch)  # calling = update
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.compute()
    assert any("1 repeated" in str(w.message) or "repeated sample" in str(w.message) for w in caught)
    exact = AnomalyMetrics(["a"], pixel_mode="exact")
    ref = AnomalyMetrics(["a"], pixel_mode="exact")
    for output, batch in batches + batches[:1]:
        exact.update(output, batch)
    for output, batch in batches:
        ref.update(output, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: exact mode drops them
        assert exact.compute().equals(ref.compute())


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_runs_on_device(device):
    _, batches = make_batches(["a"], n=4)
    cpu, dev = AnomalyMetrics(["a"]), AnomalyMetrics(["a"]).to(device)
    for output, batch in batches:
        cpu.update(output, batch)
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        dev.update({k: v.to(device) for k, v in output.items()}, moved)
    assert dev.compute().equals(cpu.compute())


def test_format_and_save(tmp_path):
    df = pd.DataFrame(
        [[99.123, 98.04, float("nan"), 97.0, 50.0, 60.0, 90.0, 80.0]], index=["bottle"], columns=list(COLUMNS)
    )
    df.index.name = "category"
    text = format_results_table(df, "MVTec AD, 256 px, 100 epochs, seed 0, 1x CPU, image score = max of map")
    lines = text.splitlines()
    assert lines[0].startswith("MVTec AD, 256 px") and lines[1] == ""
    assert "99.1" in text and "98.0" in text and "–" in text and "99.123" not in text
    csv_path, md_path = save_results(df, tmp_path / "out", "mvtec_uniad", "caption")
    assert csv_path.name == "mvtec_uniad.csv" and md_path.read_text().startswith("caption")
    back = load_results(csv_path)
    assert back.index.tolist() == ["bottle"] and back.loc["bottle", "I-AUROC"] == pytest.approx(99.123)
