"""Every shipped config through the real CLI: configs/demo/*.yaml and configs/<model>/*.yaml.

Each config is found by globbing, so one added later is tested without editing this file. It is rewritten
only where a test must: pretrained weights off, every dataset ``root`` pointed at a tiny fake tree in the
publisher's layout with batches of 2 (the built-in synthetic data made smaller instead), no workers. Then
``anomaly-zoo fit --config <it> --trainer.fast_dev_run true`` runs in-process through ``anomaly_zoo.cli.main``:
the config parses, every class instantiates, one training (and validation) step and one test batch run
(the results table included), so a config
whose parts do not fit together (e.g. ``feature_size`` vs ``image_size``) fails here, not on a user's GPU.
A DataModule without a fake tree below fails loudly: add its writer to ``FAKE_TREES``.

The demo path of ``make demo`` runs too, shortened (one epoch, one category, a few images), through the
installed console script.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from anomaly_zoo import cli
from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.synthetic import SyntheticDataModule
from tests.data.layouts import make_btad, make_cifar10, make_folder, make_loco, make_mvtec, make_visa
from tests.test_cli import ROOT, run_cli

CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
#: Training images per category of fake or shrunk data (some models fit clusters on the training features first).
N_TRAIN = 8

# class path -> writer(root, categories or None) of a tiny tree in that dataset's layout, plus extra init args.
_Tree = Callable[[Path, "tuple[str, ...] | None"], dict[str, Any]]


def _mvtec_like(**kwargs: Any) -> Callable[[type], _Tree]:
    def for_class(cls: type) -> _Tree:
        def write(root: Path, categories: tuple[str, ...] | None) -> dict[str, Any]:
            make_mvtec(root, categories=categories or cls.CATEGORIES[:1], n_train=N_TRAIN, n_good=1,
                       defects={"crack": 1}, **kwargs)
            return {}
        return write
    return for_class


def _visa(root: Path, categories: tuple[str, ...] | None) -> dict[str, Any]:
    make_visa(root, categories=categories or ("candle",), n_train=N_TRAIN, n_normal_test=1, n_anomaly=1)
    return {}


def _loco(root: Path, categories: tuple[str, ...] | None) -> dict[str, Any]:
    make_loco(root, categories=categories or ("breakfast_box",), n_train=N_TRAIN, n_val=1, n_good=1, n_anomalous=1)
    return {}


def _btad(root: Path, categories: tuple[str, ...] | None) -> dict[str, Any]:
    make_btad(root, n_train=N_TRAIN, n_ok=1, n_ko=1)
    return {}


def _cifar10(root: Path, categories: tuple[str, ...] | None) -> dict[str, Any]:
    make_cifar10(root, per_class_train=2, per_class_test=1)
    return {}


def _folder(root: Path, categories: tuple[str, ...] | None) -> dict[str, Any]:
    make_folder(root, n_normal=N_TRAIN + 1, n_normal_test=1, n_abnormal=1)
    return {"normal_dir": "train/good", "normal_test_dir": "test/good", "abnormal_dir": "test/Ungood/img",
            "mask_dir": "test/Ungood/label"}


FAKE_TREES: dict[str, Callable[[type], _Tree]] = {
    "anomaly_zoo.data.mvtec_ad.MVTecAD": _mvtec_like(),
    "anomaly_zoo.data.mpdd.MPDD": _mvtec_like(),
    "anomaly_zoo.data.visa.VisA": lambda cls: _visa,
    "anomaly_zoo.data.mvtec_loco.MVTecLOCO": lambda cls: _loco,
    "anomaly_zoo.data.btad.BTAD": lambda cls: _btad,
    "anomaly_zoo.data.cifar10.CIFAR10": lambda cls: _cifar10,
    "anomaly_zoo.data.folder.Folder": lambda cls: _folder,
}


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _categories(init_args: dict) -> tuple[str, ...] | None:
    category = init_args.get("category", "all")
    if category == "all":
        return None
    return (category,) if isinstance(category, str) else tuple(str(c) for c in category)


def _fake_data(node: Any, tmp_path: Path) -> None:
    """Point every DataModule under ``node`` at a fake tree (in place); recurse into composite ones."""
    if isinstance(node, list):
        for item in node:
            _fake_data(item, tmp_path)
        return
    if not isinstance(node, dict):
        return
    if "class_path" in node:
        cls = _import(node["class_path"])
        args = node.setdefault("init_args", {})
        parameters = inspect.signature(cls.__init__).parameters if isinstance(cls, type) else {}
        if isinstance(cls, type) and issubclass(cls, AnomalyDataModule):
            if "num_workers" in parameters:
                args.update(num_workers=0)
            if issubclass(cls, SyntheticDataModule):  # built in: generated, only made smaller
                args.update(num_train=N_TRAIN, num_val=min(args.get("num_val", 16), 2), num_test=4)
            elif "root" in parameters:
                args.update(batch_size=2, eval_batch_size=2)
                writer = FAKE_TREES.get(node["class_path"])
                if writer is None:
                    pytest.fail(f"no fake tree for {node['class_path']}: add a writer to FAKE_TREES in {__file__}")
                root = tmp_path / f"data{len(list(tmp_path.glob('data*')))}"
                args.update(writer(cls)(root, _categories(args)), root=str(root))
        for value in args.values():
            _fake_data(value, tmp_path)
        return
    for value in node.values():
        _fake_data(value, tmp_path)


def _weights_off(node: Any) -> None:
    """Every ``pretrained`` option in the model section becomes ``false`` (no download, no cached weights)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pretrained" and value not in (False, None):
                node[key] = False
            else:
                _weights_off(value)
    elif isinstance(node, list):
        for item in node:
            _weights_off(item)


def test_every_model_has_configs():
    names = {p.parent.name for p in CONFIGS}
    assert {"demo", "uniad"} <= names, names
    assert ROOT / "configs" / "demo" / "uniad.yaml" in CONFIGS


def _config_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# Demo configs are tiny: one step each in the fast suite. Paper configs (ViT-L/14 at 518 px, 452 M-parameter
# AnomalyMoE, EfficientNet-B4 at 224 px) take minutes per step on 2 CPU cores: the fast suite parses them
# (every class path and option checked against the signatures) and the slow suite runs their step.
DEMO_CONFIGS = [c for c in CONFIGS if c.parent.name == "demo"]
PAPER_CONFIGS = [c for c in CONFIGS if c.parent.name != "demo"]
ONE_STEP = [pytest.param(c, id=_config_id(c)) for c in DEMO_CONFIGS] + [
    pytest.param(c, id=_config_id(c), marks=pytest.mark.slow) for c in PAPER_CONFIGS
]


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_config_parses_against_the_signatures(config: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["anomaly-zoo"])  # main() replaces it
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() replaces it
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (None, 0), f"{config.relative_to(ROOT)} does not parse: {capsys.readouterr().err[-2000:]}"
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]


@pytest.mark.parametrize("config", ONE_STEP)
def test_config_instantiates_and_runs_one_step(config: Path, tmp_path: Path, monkeypatch):
    data = yaml.safe_load(config.read_text())
    assert {"model", "data", "trainer"} <= data.keys(), f"{config} lacks a model, data or trainer section"
    _weights_off(data["model"])
    # Paper configs leave `pretrained` at its default (true): switch it off wherever the model has it.
    parameters = inspect.signature(_import(data["model"]["class_path"]).__init__).parameters
    init_args = data["model"].setdefault("init_args", {})
    if "pretrained" in parameters:
        init_args["pretrained"] = False
    if "mask_settings" in parameters:  # AnomalyMoE's component-mask feature model (DINO v1)
        init_args["mask_settings"] = {**(init_args.get("mask_settings") or {}), "pretrained": False}
    _fake_data(data["data"], tmp_path)
    data["trainer"].pop("callbacks", None)  # checkpointing callbacks: fast_dev_run writes nothing anyway
    rewritten = tmp_path / config.name
    rewritten.write_text(yaml.safe_dump(data))
    argv = ["fit", "--config", str(rewritten), "--trainer.fast_dev_run", "true", "--test_after_fit", "true",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir",
            str(tmp_path / "out")]
    if config in PAPER_CONFIGS:
        # A fresh process: the 452 M-parameter AnomalyMoE step peaks at ~20 GB on its own, and on top of what the
        # earlier in-process tests left behind it was OOM-killed on a 24 GB machine.
        result = run_cli(*argv, cwd=tmp_path, timeout=1800)
        code, detail = result.returncode, result.stderr[-3000:]
    else:
        code, detail = main_in_process(argv, monkeypatch, cwd=tmp_path), "see stderr"
    if code not in (None, 0):
        pytest.fail(f"{config.relative_to(ROOT)} failed through the CLI (exit {code}): {detail}")


@pytest.mark.timeout(600)
def test_demo_config_runs_fast(tmp_path: Path):
    """``make demo`` shortened: the same config and command, one epoch on one category with a few images."""
    result = run_cli(
        "fit", "--config", str(ROOT / "configs" / "demo" / "uniad.yaml"), "--test_after_fit", "true",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        "--data.init_args.category", "stripes", "--data.init_args.num_train", "8", "--data.init_args.num_val", "0",
        "--data.init_args.num_test", "4", "--trainer.default_root_dir", str(tmp_path), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(next(tmp_path.rglob("test_results.csv")), index_col=0)
    assert list(table.index) == ["stripes", "mean"]
    assert table[["I-AUROC", "P-AUROC", "AUPRO"]].notna().all().all()
    assert "I-AUROC" in result.stdout  # the table is printed, as `make demo` promises


def main_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> int | str | None:
    """``cli.main(argv)`` in this process, run from ``cwd``; its exit code (``None`` when it returned)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["anomaly-zoo"])  # main() replaces it
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() replaces it
    try:
        cli.main(argv)
    except SystemExit as exit_:
        return exit_.code
    return None
