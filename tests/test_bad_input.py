"""Bad input through the real entry point: one clear line naming the file or option, exit code, nothing written.

Each case runs ``anomaly_zoo.cli.main([...])`` in-process on a tiny fake MVTec AD tree (16 px images, 32 px
input, random-init backbones); two cases run the installed console script to see the console exactly as
a user does (stderr's literal first line, DataLoader workers, Lightning's own noise).
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from anomaly_zoo.cli import concise_parser_error, main
from anomaly_zoo.data import DatasetError
from anomaly_zoo.data.errors import DuplicateCategoryWarning, EmptyMaskWarning, worker_message
from anomaly_zoo.data.io import read_image
from anomaly_zoo.data.mvtec_ad import MVTecAD
from tests.data.layouts import make_mvtec, write_mask

CLI = str(Path(sys.executable).parent / "anomaly-zoo")
FD = ["--model", "feature_distance", "--model.pretrained", "false"]
UNIAD = ["--model", "uniad", "--model.backbone", "resnet18", "--model.taps", "[1, 2]", "--model.feature_size", "4",
         "--model.hidden_dim", "16", "--model.num_heads", "2", "--model.num_encoder_layers", "1",
         "--model.num_decoder_layers", "1", "--model.dim_feedforward", "16", "--model.neighbor_size", "3",
         "--model.pretrained", "false"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.max_epochs", "1", "--seed_everything", "0"]


def data(root: Path, size: int = 32, workers: int = 0) -> list[str]:
    return ["--data", "mvtec_ad", "--data.root", str(root), "--data.image_size", str(size),
            "--data.num_workers", str(workers), "--data.batch_size", "4"]


def run(capsys, *args: str) -> tuple[int, str]:
    """``main(args)`` → (exit code, stderr)."""
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_clear_error(code: int, err: str, *names: str, exit_code: int = 1, max_lines: int = 3) -> list[str]:
    """Exit code, an ``error:`` first line naming ``names``, a few lines at most, no traceback."""
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert lines and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert len(lines) <= max_lines, err
    assert "Traceback" not in err
    return lines


def assert_nothing_written(results: Path) -> None:
    assert not results.exists() or not list(results.rglob("*")), list(results.rglob("*"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("tree"), categories=("widget",), n_train=4, n_good=2)


@pytest.fixture(scope="module")
def checkpoints(tree, tmp_path_factory) -> dict[str, Path]:
    """A feature-distance and a UniAD checkpoint, both fitted at 32 px (one training step each)."""
    out = tmp_path_factory.mktemp("fits")
    found = {}
    for name, model in (("fd", FD), ("uniad", UNIAD)):
        try:
            main(["fit", *model, *data(tree), *QUIET, "--trainer.default_root_dir", str(out / name)])
        except SystemExit as exc:
            assert exc.code in (0, None), f"fit of {name} failed"
        found[name] = next((out / name).rglob("*.ckpt"))
    return found


# ---- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_of_another_model_is_an_error_unless_asked(capsys, tree, checkpoints, tmp_path):
    results = tmp_path / "results"
    code, err = run(capsys, "test", *FD, *data(tree), *QUIET, "--ckpt_path", str(checkpoints["uniad"]),
                    "--trainer.default_root_dir", str(results))
    assert_clear_error(code, err, "--ckpt_path", str(checkpoints["uniad"]), "uniad", "--allow_model_mismatch")
    assert_nothing_written(results)
    with pytest.warns(UserWarning, match="running uniad, not --model feature_distance"):
        code, err = run(capsys, "test", *FD, *data(tree), *QUIET, "--ckpt_path", str(checkpoints["uniad"]),
                        "--allow_model_mismatch", "true", "--trainer.default_root_dir", str(results))
    assert code == 0, err
    assert [p.parent.parent.parent.name for p in results.rglob("test_results.csv")] == ["uniad"]


def test_checkpoint_fitted_at_another_size_is_an_error_unless_asked(capsys, tree, checkpoints, tmp_path):
    results = tmp_path / "results"
    code, err = run(capsys, "test", *UNIAD, *data(tree, size=64), *QUIET, "--ckpt_path", str(checkpoints["uniad"]),
                    "--trainer.default_root_dir", str(results))
    lines = assert_clear_error(code, err, "--ckpt_path", "image_size 32", "--data.image_size is 64")
    assert "--allow_image_size_mismatch" in lines[0]
    assert_nothing_written(results)
    code, err = run(capsys, "test", *UNIAD, *data(tree, size=64), *QUIET, "--ckpt_path", str(checkpoints["uniad"]),
                    "--allow_image_size_mismatch", "true", "--trainer.default_root_dir", str(results))
    assert code == 0, err


def test_missing_and_non_checkpoint_files(capsys, tree, tmp_path):
    results = tmp_path / "results"
    missing = tmp_path / "nowhere.ckpt"
    code, err = run(capsys, "test", *FD, *data(tree), "--ckpt_path", str(missing), "--trainer.default_root_dir",
                    str(results))
    assert_clear_error(code, err, str(missing), "--ckpt_path", "does not exist")
    junk = tmp_path / "notes.ckpt"
    junk.write_text("not a checkpoint")
    code, err = run(capsys, "test", *FD, *data(tree), "--ckpt_path", str(junk), "--trainer.default_root_dir",
                    str(results))
    lines = assert_clear_error(code, err, str(junk), "--ckpt_path")
    assert "weights_only=False" not in err  # never advise unpickling an unknown file
    bare = tmp_path / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2)}, bare)
    code, err = run(capsys, "test", *FD, *data(tree), "--ckpt_path", str(bare), "--trainer.default_root_dir",
                    str(results))
    lines = assert_clear_error(code, err, str(bare), "not a Lightning checkpoint", "official_checkpoint")
    assert len(lines[0]) < 400
    assert_nothing_written(results)


def test_checkpoint_with_unsafe_objects_is_refused_not_unpickled(capsys, tree, tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2", "x": _Exploit()}, evil)
    code, err = run(capsys, "test", *FD, *data(tree), "--ckpt_path", str(evil), "--trainer.default_root_dir",
                    str(tmp_path / "r"))
    assert_clear_error(code, err, str(evil), "allow-list", "builtins.exec")
    assert not (tmp_path / "pwned").exists()


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('pwned', 'w')",))


def test_bad_official_checkpoint(capsys, tree, tmp_path):
    missing = tmp_path / "ckpt.pth.tar"
    code, err = run(capsys, "fit", *UNIAD, "--model.official_checkpoint", str(missing), *data(tree), *QUIET,
                    "--trainer.default_root_dir", str(tmp_path / "r"))
    assert_clear_error(code, err, str(missing), "official_checkpoint")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"\x00" * 64)
    code, err = run(capsys, "fit", *UNIAD, "--model.official_checkpoint", str(junk), *data(tree), *QUIET,
                    "--trainer.default_root_dir", str(tmp_path / "r"))
    assert_clear_error(code, err, str(junk), "official_checkpoint")
    assert_nothing_written(tmp_path / "r")


# ---- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "named"),
    [("--data.batch_size", "0", "batch_size"), ("--data.image_size", "-5", "image_size"),
     ("--data.num_workers", "-1", "num_workers")],
)
def test_impossible_data_options(capsys, tree, tmp_path, option, value, named):
    args = [*data(tree), option, value]
    code, err = run(capsys, "fit", *FD, *args, *QUIET, "--trainer.default_root_dir", str(tmp_path / "r"))
    assert_clear_error(code, err, named, value)
    assert_nothing_written(tmp_path / "r")


def test_zero_epochs_with_test_after_fit(capsys, tree, tmp_path):
    code, err = run(capsys, "fit", *FD, *data(tree), *QUIET, "--trainer.max_epochs", "0", "--test_after_fit", "true",
                    "--trainer.default_root_dir", str(tmp_path / "r"))
    assert_clear_error(code, err, "--trainer.max_epochs 0", "--test_after_fit")
    assert_nothing_written(tmp_path / "r")


def test_endless_training_warns(capsys, tmp_path):
    with pytest.warns(UserWarning, match="max_epochs -1.*max_steps"):
        code, err = run(capsys, "fit", *FD, *data(tmp_path / "missing"), "--trainer.max_epochs", "-1")
    assert_clear_error(code, err, str(tmp_path / "missing"))  # and the run still fails on the real problem


@pytest.mark.parametrize(
    ("args", "named", "hint"),
    [(["--model.init_args.lrr", "1e-3"], "--model.init_args.lrr", "did you mean --model.init_args.lr?"),
     (["--data.batch_size", "abc"], "--data.init_args.batch_size", "expects int, got 'abc'"),
     (["--trainer.max_epocs", "3"], "--trainer.max_epocs", "did you mean --trainer.max_epochs?"),
     (["--data.image_size", "big"], "--data.init_args.image_size", "expects int | tuple[int, int] | null")],
)
def test_option_errors_are_one_line_with_the_closest_names(capsys, tree, args, named, hint):
    model = UNIAD if "lrr" in args[0] else FD
    code, err = run(capsys, "fit", *model, *data(tree), *args)
    lines = assert_clear_error(code, err, named, hint, exit_code=2, max_lines=2)
    assert "usage:" not in err and "Given value type" not in err
    assert "--help" in lines[-1]


def test_parser_message_reduction_of_a_nested_unknown_option():
    message = """Parser key "data":
  Does not validate against any of the Union subtypes
  Errors:
    - Problem with given class_path 'anomaly_zoo.data.mvtec_ad.MVTecAD':
        Option 'btach_size' is not accepted
    - Expected a <class 'NoneType'>"""
    assert concise_parser_error(message) == (
        "unknown option --data.init_args.btach_size: MVTecAD has no option 'btach_size'; "
        "did you mean --data.init_args.batch_size?")
    assert concise_parser_error("unrecognized arguments: --sed 3") == "unknown option --sed"
    required = concise_parser_error("the following arguments are required: test.model")
    assert required.startswith("--model is required (one of: ") and "feature_distance" in required


# ---- data ------------------------------------------------------------------------------------------
def test_root_pointing_at_a_category_suggests_the_parent(capsys, tree, tmp_path):
    code, err = run(capsys, "fit", *FD, *data(tree / "widget"), *QUIET, "--data.category", "widget",
                    "--trainer.default_root_dir", str(tmp_path / "r"))
    assert_clear_error(code, err, str(tree / "widget"), f"`root` '{tree}'", "`category` widget")


def test_every_bad_file_is_found_before_fit_in_one_summary(capsys, tmp_path):
    root = make_mvtec(tmp_path / "data", categories=("widget",), n_train=4, n_good=2)
    corrupt_train = root / "widget/train/good/001.png"
    corrupt_train.write_bytes(b"garbage")
    corrupt_test = root / "widget/test/good/001.png"
    corrupt_test.write_bytes(corrupt_test.read_bytes()[:40])  # truncated: the header alone still parses
    wrong_mask = write_mask(root / "widget/ground_truth/crack/001_mask.png", (slice(0, 2), slice(0, 2)), size=(20, 20))
    results = tmp_path / "results"
    code, err = run(capsys, "fit", *FD, *data(root), *QUIET, "--test_after_fit", "true",
                    "--trainer.default_root_dir", str(results))
    lines = assert_clear_error(code, err, "3 problems", str(root), max_lines=6)
    body = "\n".join(lines)
    for path in (corrupt_train, corrupt_test, wrong_mask):
        assert str(path) in body
    assert "(train split)" in body and "(test split)" in body and "20x20" in body
    assert_nothing_written(results)


def test_empty_masks_warn_once_counted_and_duplicate_categories_are_used_once(capsys, tree, checkpoints, tmp_path):
    root = make_mvtec(tmp_path / "data", categories=("widget",), n_train=4, n_good=2)
    for stem in ("crack/000", "crack/001"):
        write_mask(root / f"widget/ground_truth/{stem}_mask.png", np.zeros((16, 16), bool))
    results = tmp_path / "results"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run(capsys, "test", *FD, *data(root), *QUIET, "--data.category", "[widget, widget]",
                        "--ckpt_path", str(checkpoints["fd"]), "--trainer.default_root_dir", str(results))
    assert code == 0, err
    empty = [w for w in caught if issubclass(w.category, EmptyMaskWarning)]
    assert len(empty) == 1 and str(empty[0].message).startswith("2 anomalous image(s) have an all-zero")
    assert len([w for w in caught if issubclass(w.category, DuplicateCategoryWarning)]) == 1
    table = pd.read_csv(next(results.rglob("test_results.csv")), index_col=0)
    assert list(table.index) == ["widget", "mean"]
    dm = MVTecAD(root, category=["widget", "widget"], image_size=32, num_workers=0)
    with pytest.warns(DuplicateCategoryWarning):
        dm.setup("test")
    assert len(dm.test_dataset) == 5  # 2 good + 2 crack + 1 hole, each once


def test_rgba_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 0, 0, 0)     # fully transparent: white, as a viewer shows it
    rgba[1, :] = (0, 0, 0, 128)     # half-transparent black over white: mid grey
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = read_image(path)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert np.abs(rgb[1].astype(int) - 127).max() <= 1


def test_worker_errors_are_unwrapped_to_the_dataset_message(tmp_path):
    root = make_mvtec(tmp_path, categories=("widget",), n_train=2, n_good=1)
    broken = root / "widget/train/good/001.png"
    broken.write_bytes(b"garbage")
    # cache off: a decoded-image cache would meet the bad file in the main process, before any worker
    dm = MVTecAD(root, category="widget", image_size=32, num_workers=1, batch_size=2, cache="off")
    dm.setup("fit")  # no check_splits: the bad file is only met when a worker reads it
    with pytest.raises(DatasetError) as info:
        next(iter(dm.train_dataloader()))
    assert str(info.value).startswith("Caught DatasetError in DataLoader worker")
    assert worker_message(info.value).startswith(f"Cannot read image '{broken}'")
    assert "\n" not in worker_message(info.value)


def test_traceback_only_when_asked(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_ZOO_TRACEBACK", "1")
    with pytest.raises(DatasetError, match="not found"):
        main(["fit", *FD, *data(tmp_path / "missing")])


def test_corrupt_training_image_with_workers_is_caught_before_the_loaders_start(capsys, tmp_path):
    root = make_mvtec(tmp_path / "data", categories=("widget",), n_train=4, n_good=2)
    broken = root / "widget/train/good/002.png"
    broken.write_bytes(b"garbage")
    code, err = run(capsys, "fit", *FD, *data(root, workers=4), *QUIET, "--trainer.default_root_dir",
                    str(tmp_path / "results"))
    assert_clear_error(code, err, str(broken), "train split", max_lines=2)
    assert "worker" not in err.lower()
    assert_nothing_written(tmp_path / "results")


# ---- the console as a user sees it (a fresh process: slow on a loaded machine) -----------------------------
def _console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_corrupt_training_image_with_workers_is_one_line_from_the_main_process(tmp_path):
    root = make_mvtec(tmp_path / "data", categories=("widget",), n_train=4, n_good=2)
    broken = root / "widget/train/good/002.png"
    broken.write_bytes(b"garbage")
    result = _console("fit", *FD, *data(root, workers=4), *QUIET, cwd=tmp_path)
    lines = assert_clear_error(result.returncode, result.stderr, str(broken), max_lines=2)
    assert "worker" not in result.stderr.lower() and "Caught" not in result.stderr
    assert lines[-1] == "(set ANOMALY_ZOO_TRACEBACK=1 for the full traceback)"
    assert_nothing_written(tmp_path / "results")


@pytest.mark.slow
def test_a_good_run_prints_no_lightning_noise(tmp_path):
    root = make_mvtec(tmp_path / "data", categories=("widget",), n_train=4, n_good=2)
    result = _console("fit", *FD, *data(root), *QUIET, "--test_after_fit", "true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert "I-AUROC" in console
    for noise in ("will override existing callbacks", "weights_only", "No seed found", "💡"):
        assert noise not in console, noise
