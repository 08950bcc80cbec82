"""The benchmark suite (`make benchmark`, `make demo`): runner, reuse, skipping, failure isolation, tables, plots.

The end-to-end fixture runs a minimal suite through the real CLI in subprocesses: a deliberately broken entry
first, then a tiny feature-distance baseline (32 px synthetic data, 2 categories × 8 test images, 1 epoch),
plus entries whose config or data root is missing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from benchmarks.suite import tables
from benchmarks.suite.cache import code_version
from benchmarks.suite.plots import load_curves
from benchmarks.suite.report import write_reports
from benchmarks.suite.runner import Record, Runner, error_line
from benchmarks.suite.spec import ROOT, load_suite, skip_reason

TINY_DATA = ["--data.init_args.image_size", "32", "--data.init_args.generated_size", "32",
             "--data.init_args.num_train", "8", "--data.init_args.num_val", "4", "--data.init_args.num_test", "8",
             "--data.init_args.category", "[stripes, grid]"]
MINI_SUITE = {
    "suites": {
        "synthetic": {
            "title": "tiny", "dataset": "synthetic", "seeds": [0],
            "entries": [
                {"model": "broken", "config": "configs/demo/feature_distance.yaml",
                 "args": ["--model.init_args.no_such_option", "1"]},
                {"model": "feature_distance", "config": "configs/demo/feature_distance.yaml", "args": TINY_DATA},
                {"model": "not_yet", "config": "configs/demo/not_yet_written.yaml"},
            ],
        },
        "mvtec_ad": {
            "title": "MVTec AD", "dataset": "MVTec AD",
            "entries": [{"model": "feature_distance", "config": "configs/demo/feature_distance.yaml",
                         "roots": {"data.init_args.root": "mvtec_anomaly_detection"},
                         "setting": "unified, 224 px, 1000 epochs"}],
        },
    }
}


def write_suite(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory):
    """The minimal suite, run once; its records, runner and written results folder."""
    tmp = tmp_path_factory.mktemp("bench")
    suites = load_suite(write_suite(tmp / "suite.yaml", MINI_SUITE))
    entries = [e for s in suites for e in s.entries]
    runner = Runner(runs_dir=tmp / "runs", data_root=str(tmp / "no_data_here"), quiet=True)
    records = runner.run_all(entries)
    out = tmp / "results"
    write_reports(records, suites, out)
    return {"records": {r.id: r for r in records}, "runner": runner, "entries": entries, "out": out}


# ---- end to end (one minimal suite through the real CLI) -----------------------------------------------
def test_failing_entry_is_recorded_and_the_next_one_still_runs(mini):
    broken = mini["records"]["synthetic/broken/seed0"]
    assert broken.status == "failed"
    assert broken.reason.startswith("error:") and "no_such_option" in broken.reason  # the CLI's own error line
    assert mini["records"]["synthetic/feature_distance/seed0"].status == "ok"
    readme = (mini["out"] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "`synthetic/broken/seed0`" in x)
    assert line.startswith("- **failed** (error:") and "no_such_option" in line


def test_missing_config_and_missing_data_root_are_skipped_with_their_reason(mini):
    not_yet = mini["records"]["synthetic/not_yet/seed0"]
    assert not_yet.status == "skipped" and not_yet.reason == "config configs/demo/not_yet_written.yaml does not exist yet"
    dataset = mini["records"]["mvtec_ad/feature_distance/seed0"]
    assert dataset.status == "skipped"
    assert dataset.reason == f"data root not found: {Path(mini['runner'].data_root) / 'mvtec_anomaly_detection'}"
    assert dataset.reason in (mini["out"] / "datasets.md").read_text()


def test_tables_have_the_expected_columns_and_values_in_range(mini):
    out = mini["out"]
    runs = pd.read_csv(out / "runs.csv")
    ok = runs[(runs.model == "feature_distance") & (runs.suite == "synthetic")]
    assert list(ok.category) == ["stripes", "grid", "mean"]
    for column in ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO", "mAD"):
        assert ok[column].between(0, 100).all(), column
    # The mean row is the unweighted mean of the categories, as the run's own table says.
    categories = ok[ok.category != "mean"]
    assert ok[ok.category == "mean"]["I-AUROC"].item() == pytest.approx(categories["I-AUROC"].mean())

    synthetic = pd.read_csv(out / "synthetic.csv").set_index("model")
    assert synthetic.loc["feature_distance", "seeds"] == 1
    assert synthetic.loc["feature_distance", "I-AUROC"] == pytest.approx(ok[ok.category == "mean"]["I-AUROC"].item())
    assert math.isnan(synthetic.loc["feature_distance", "I-AUROC std"])  # one seed: no spread
    assert synthetic.loc["broken", "status"] == "failed" and synthetic.loc["not_yet", "status"] == "skipped"

    speed = pd.read_csv(out / "speed.csv").set_index("model")
    row = speed.loc["feature_distance"]
    assert row["test images"] == 2 * 8  # 2 categories × 8 test images
    assert row["inference img/s"] * row["ms/image"] == pytest.approx(1000)
    assert row["train img/s"] > 0 and row["peak RSS (MB)"] > 100
    assert row["ratio to backbone"] >= 1.0  # inference contains the frozen backbone's forward
    assert 0 < row["evaluation share of test loop (%)"] < 100
    assert row["backbone modules"] == "TimmFeatureExtractor"
    md = (out / "speed.md").read_text()
    for key in ("device: cpu", "torch threads", "torch:", "lightning:", "timm:", "open_clip_torch:", "git commit:"):
        assert key in md


def test_curves_are_the_runs_own_and_the_png_opens(mini):
    record = mini["records"]["synthetic/feature_distance/seed0"]
    curves = load_curves(record)
    table = record.results()
    for category in ("stripes", "grid"):
        fpr, tpr = curves["image_roc"][category]
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        # The trapezoid under the stored ROC is the table's image AUROC (8 images: no thinning).
        assert 100 * np.trapezoid(tpr, fpr) == pytest.approx(table.loc[category, "I-AUROC"], abs=1e-6)
        fpr, pro = curves["pro"][category]
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    plots = sorted((mini["out"] / "plots").glob("*.png"))
    assert {p.name for p in plots} >= {"synthetic_comparison.png", "synthetic_feature_distance_synthetic_curves.png"}
    for png in plots:
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert "(plots/synthetic_feature_distance_synthetic_curves.png)" in (mini["out"] / "synthetic.md").read_text()


def test_a_second_run_reuses_finished_entries(mini):
    records = mini["records"]
    entries = [e for e in mini["entries"] if e.model == "feature_distance" and e.suite == "synthetic"]
    again = mini["runner"].run_all(entries)
    assert [r.status for r in again] == ["reused"]
    assert again[0].run_dir == records["synthetic/feature_distance/seed0"].run_dir
    assert again[0].finished == records["synthetic/feature_distance/seed0"].finished
    assert again[0].results().equals(records["synthetic/feature_distance/seed0"].results())


@pytest.mark.slow
def test_force_runs_a_finished_entry_again(mini):
    records = mini["records"]
    entries = [e for e in mini["entries"] if e.model == "feature_distance" and e.suite == "synthetic"]
    forced_runner = Runner(runs_dir=mini["runner"].runs_dir, data_root=mini["runner"].data_root, force=True,
                           quiet=True)
    forced_runner._code_versions = dict(mini["runner"]._code_versions)  # same code, even if the tree moved
    forced = forced_runner.run_all(entries)
    assert [r.status for r in forced] == ["ok"]
    assert forced[0].duration_s != records["synthetic/feature_distance/seed0"].duration_s  # a new process ran
    assert json.loads((Path(forced[0].run_dir) / "record.json").read_text())["duration_s"] == forced[0].duration_s


# ---- pieces, hand-checked ------------------------------------------------------------------------------
def _fake_record(tmp: Path, model: str, seed: int, values: dict[str, list[float]], suite: str = "synthetic",
                 dataset: str = "synthetic", probe: dict | None = None) -> Record:
    run_dir = tmp / f"{model}{seed}"
    run_dir.mkdir()
    frame = pd.DataFrame(values, index=pd.Index(["a", "b"], name="category"))
    frame.loc["mean"] = frame.mean()
    frame.to_csv(run_dir / "test_results.csv")
    return Record(id=f"{suite}/{model}/seed{seed}", suite=suite, model=model, dataset=dataset, seed=seed,
                  config="c.yaml", status="ok", run_dir=str(run_dir), probe=probe or {})


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path: Path):
    # Seed 0: mean I-AUROC (80 + 90) / 2 = 85; seed 1: (90 + 100) / 2 = 95 → 90 ± sqrt(50) = 7.07.
    records = [_fake_record(tmp_path, "m", 0, {"I-AUROC": [80.0, 90.0], "P-AUROC": [50.0, 50.0]},
                            probe={"fit_s": 10.0, "inference_s": 1.0, "test_images": 100}),
               _fake_record(tmp_path, "m", 1, {"I-AUROC": [90.0, 100.0], "P-AUROC": [60.0, 60.0]},
                            probe={"fit_s": 20.0, "inference_s": 2.0, "test_images": 100})]
    summary = tables.summary_frame(records, "synthetic").set_index("model")
    assert summary.loc["m", "I-AUROC"] == pytest.approx(90.0)
    assert summary.loc["m", "I-AUROC std"] == pytest.approx(math.sqrt(50))
    assert summary.loc["m", "P-AUROC"] == pytest.approx(55.0)
    assert summary.loc["m", "train time (s)"] == pytest.approx(15.0)
    assert summary.loc["m", "ms/image"] == pytest.approx(15.0)  # (10 + 20 ms per image) / 2
    assert "| `m` | 2 | 90.0 ± 7.1 | 55.0 ± 7.1 |" in tables.summary_markdown(summary.reset_index(),
                                                                             ["I-AUROC", "P-AUROC"])


def test_published_rows_get_ours_and_the_difference_only_where_the_setting_matches(tmp_path: Path):
    ours = _fake_record(tmp_path, "uniad", 0, {"I-AUROC": [95.0, 97.0], "P-AUROC": [96.0, 98.0]},
                        suite="mvtec_ad", dataset="MVTec AD")
    published = pd.DataFrame([
        {"model": "uniad", "dataset": "MVTec AD", "setting": "unified, 224 px", "source": "paper",
         "I-AUROC": 96.5, "P-AUROC": 96.8, "AUPRO": np.nan},
        {"model": "uniad", "dataset": "MVTec AD", "setting": "unified, 256 px", "source": "re-run",
         "I-AUROC": 96.8, "P-AUROC": 96.8, "AUPRO": 91.0},
    ])
    comparison = tables.published_comparison([ours], {("uniad", "MVTec AD"): "unified, 224 px"}, published)
    assert list(comparison.row) == ["published", "ours", "difference", "published", "ours"]
    diff = comparison.iloc[2]
    assert diff["I-AUROC"] == pytest.approx(96.0 - 96.5) and diff["P-AUROC"] == pytest.approx(97.0 - 96.8)
    assert math.isnan(diff["AUPRO"])
    assert comparison.iloc[4]["note"] == "no suite entry in this setting"


def test_the_committed_published_numbers_carry_a_source_each():
    published = tables.load_published()
    assert published["source"].notna().all() and published["url"].str.startswith("https://").all()
    paper = published[(published.model == "uniad") & (published.source.str.contains("paper"))].iloc[0]
    assert (paper["I-AUROC"], paper["P-AUROC"]) == (96.5, 96.8)
    moeclip = published[(published.model == "moeclip") & published.dataset.str.startswith("MVTec AD")].iloc[0]
    assert (moeclip["I-AUROC"], moeclip["I-AP"], moeclip["P-AUROC"], moeclip["P-AP"]) == (93.9, 96.8, 92.5, 45.7)
    assert "no numbers" in published[published.model == "anomalymoe"].iloc[0]["note"]


def test_code_version_follows_shared_code_and_the_own_model_only(tmp_path: Path):
    for path in ("anomaly_zoo/core.py", "anomaly_zoo/models/__init__.py", "anomaly_zoo/models/a/model.py",
                 "anomaly_zoo/models/b/model.py", "anomaly_zoo/models/components/c.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x = 1\n")
    config = tmp_path / "a.yaml"
    config.write_text("model:\n  class_path: anomaly_zoo.models.a.A\n")
    first = code_version(config, tmp_path)
    (tmp_path / "anomaly_zoo/models/b/model.py").write_text("x = 2\n")  # another model
    (tmp_path / "anomaly_zoo/models/__init__.py").write_text("x = 2\n")  # the registration list
    assert code_version(config, tmp_path) == first
    for path in ("anomaly_zoo/models/a/model.py", "anomaly_zoo/core.py", "anomaly_zoo/models/components/c.py"):
        before = code_version(config, tmp_path)
        (tmp_path / path).write_text("x = 3\n")
        assert code_version(config, tmp_path) != before, path


def test_suite_file_lists_every_models_demo_config_with_three_seeds():
    suites = {s.name: s for s in load_suite()}
    synthetic = suites["synthetic"].entries
    assert {e.config for e in synthetic} >= {"configs/demo/uniad.yaml", "configs/demo/moeclip.yaml",
                                            "configs/demo/anomalymoe.yaml"}
    assert {e.seed for e in synthetic} == {0, 1, 2}
    assert {e.model for e in synthetic if e.demo} == {"uniad", "moeclip", "anomalymoe"}
    gpu = next(e for e in suites["mvtec_ad"].entries if e.model == "uniad")
    assert skip_reason(gpu, data_root=str(ROOT), has_gpu=False, allow_cpu=False) is not None


def test_two_entries_of_one_suite_need_distinct_labels(tmp_path: Path):
    spec = {"suites": {"s": {"entries": [{"model": "uniad", "config": "a.yaml"}, {"model": "uniad", "config": "b.yaml"}]}}}
    with pytest.raises(SystemExit, match="two entries named \\['uniad'\\]; give them distinct `label:`s"):
        load_suite(write_suite(tmp_path / "suite.yaml", spec))
    spec["suites"]["s"]["entries"][1]["label"] = "uniad_256"
    assert [e.id for e in load_suite(write_suite(tmp_path / "suite.yaml", spec))[0].entries] == \
        ["s/uniad/seed0", "s/uniad_256/seed0"]


def test_error_line_picks_the_cli_error_and_its_cause():
    log = "Seed set to 0\nerror: Parser key \"model\":\n  Problem:\n      Option 'x' is not accepted\n  Given: 1\n"
    assert error_line(log) == "error: Parser key \"model\": Option 'x' is not accepted"
    assert error_line("Traceback (most recent call last):\n  ...\nValueError: bad size\n") == "ValueError: bad size"


# ---- slow: the commands a user types ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_python_m_benchmarks_only_list_and_demo(tmp_path: Path):
    suite = write_suite(tmp_path / "suite.yaml", MINI_SUITE)
    common = [sys.executable, "-m", "benchmarks", "--suite", str(suite), "--runs-dir", str(tmp_path / "runs"),
              "--output-dir", str(tmp_path / "out")]
    first = subprocess.run([*common, "--only", "synthetic/feature_distance*"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "[2/4] synthetic/feature_distance/seed0: done" not in first.stdout  # --only ran one entry
    assert "summary: 1 ran, 0 reused, 0 failed, 0 skipped" in first.stdout
    listing = subprocess.run([*common, "--list"], cwd=ROOT, capture_output=True, text=True, timeout=600).stdout
    assert "synthetic/broken/seed0" in listing and "skipped: config configs/demo/not_yet_written.yaml" in listing
    demo = subprocess.run([sys.executable, "-m", "benchmarks.suite.demo", "--suite", str(suite), "--model",
                           "feature_distance", "--runs-dir", str(tmp_path / "demo")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "| model | I-AUROC | P-AUROC | AUPRO | mAD | train time | ms/image |" in demo.stdout
    record = json.loads(next((tmp_path / "demo").rglob("record.json")).read_text())
    assert record["status"] == "ok"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_micro_benchmarks_write_their_reports(tmp_path: Path):
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--micro", "--quick", "--output-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    assert set(reports) == {"metrics.md", "uniad.md", "data_cache.md", "predict.md"}
    assert "speed-up" in reports["metrics.md"] and "×" in reports["uniad.md"]
    assert "| `predict --ckpt_path` ONNX (.onnx) |" in reports["predict.md"]
