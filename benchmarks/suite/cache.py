"""Reuse keys: a finished entry is reused while its config, seed, arguments and code version are unchanged.

The code version of an entry hashes the Python sources that can change its numbers: the whole
``anomaly_zoo`` package except the *other* models' packages (and the registry import list), plus the
benchmark probe and worker. So MoECLIP landing does not re-run UniAD, but a change to the data layer, the
metrics or the shared loop re-runs everything.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import yaml

from benchmarks.suite.spec import ROOT, Entry

#: Benchmark files whose changes alter what a run records.
HARNESS = ("benchmarks/suite/probe.py", "benchmarks/suite/worker.py")


@cache
def _file_digest(path: Path, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode())
        h.update(_file_digest(path, path.stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


def model_package(config_path: Path) -> str | None:
    """``uniad`` for a config whose model is ``anomaly_zoo.models.uniad.UniAD`` (None if not one of ours)."""
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    model = config.get("model") or {}
    class_path = model.get("class_path", "") if isinstance(model, dict) else str(model)
    parts = class_path.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["anomaly_zoo", "models"] else None


def code_version(config_path: Path, root: Path = ROOT) -> str:
    """Hash of the sources under ``root`` that can change this config's results (see the module docstring)."""
    package, models = root / "anomaly_zoo", root / "anomaly_zoo" / "models"
    own = model_package(config_path)
    other_models = {p for p in models.iterdir() if p.is_dir() and p.name not in (own, "components")}
    files = [
        p for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
        and p != models / "__init__.py"
        and not any(parent in other_models for parent in p.parents)
    ]
    files += [root / h for h in HARNESS if (root / h).is_file()]
    return _digest(files, root)


def run_key(entry: Entry, cli_args: list[str], code: str, threads: int | None = None) -> str:
    """Key of one run: config text, seed, CLI arguments, code version (:func:`code_version`), thread setting."""
    payload = {
        "config": entry.config_path.read_text(encoding="utf-8"),
        "seed": entry.seed,
        "args": cli_args,
        "code": code,
    }
    if threads:
        payload["threads"] = threads
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
