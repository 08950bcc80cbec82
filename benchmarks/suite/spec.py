"""The suite definition: ``benchmarks/suite.yaml`` read into one :class:`Entry` per model × data × config × seed.

An entry is skipped before it runs — with a one-line reason that the tables show — when its config file
does not exist (yet), when a data root it needs is not on disk, or when it needs a GPU and none is present.
Data roots are folder names (the publishers' own) looked up under ``$ANOMALY_ZOO_DATA`` (or ``--data-root``),
or absolute paths given per entry.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = ROOT / "benchmarks" / "suite.yaml"
DATA_ENV = "ANOMALY_ZOO_DATA"


@dataclass(frozen=True)
class Entry:
    """One run: ``anomaly-zoo fit --config <config> --seed_everything <seed> <args> --test_after_fit true``."""

    suite: str
    model: str
    dataset: str
    config: str
    seed: int
    args: tuple[str, ...] = ()
    roots: tuple[tuple[str, str], ...] = ()  # (CLI option, folder name or absolute path)
    setting: str | None = None  # matched against published.csv's setting column
    device: str = "any"  # "any" | "gpu": gpu entries are skipped on CPU-only machines unless allowed
    expected: str | None = None  # expected run time, for the documentation of the dataset suites
    demo: bool = False
    label: str = ""  # unique within the suite (default: the model); names the run directory and the id
    note: str | None = None  # shown under the tables (e.g. a protocol that differs from the other rows)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        """``suite/label`` — one row of a results table (seeds are aggregated)."""
        return f"{self.suite}/{self.label or self.model}"

    @property
    def id(self) -> str:
        return f"{self.name}/seed{self.seed}"

    @property
    def config_path(self) -> Path:
        path = Path(self.config)
        return path if path.is_absolute() else ROOT / path

    def matches(self, pattern: str | None) -> bool:
        """``--only`` selection: a glob (``synthetic/*``, ``*uniad*``) or a plain substring of the id."""
        if not pattern:
            return True
        return any(fnmatch.fnmatch(self.id, p) or p in self.id for p in pattern.split(","))


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    entries: list[Entry]


def load_suite(path: str | Path = DEFAULT_SUITE) -> list[Suite]:
    """Read the YAML; every entry is expanded over its suite's (or its own) ``seeds``."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SystemExit(f"error: suite file '{path}' does not exist") from None
    suites = []
    for suite_name, body in (spec.get("suites") or {}).items():
        body = body or {}
        entries = []
        for raw in body.get("entries") or []:
            unknown = set(raw) - {"model", "config", "dataset", "args", "roots", "setting", "device", "expected",
                                  "seeds", "demo", "note", "label"}
            if unknown or "model" not in raw or "config" not in raw:
                raise SystemExit(f"error: {path}: suite '{suite_name}' entry {raw!r} needs `model` and `config`"
                                 + (f"; unknown keys {sorted(unknown)}" if unknown else ""))
            for seed in raw.get("seeds", body.get("seeds", [0])):
                entries.append(Entry(
                    suite=suite_name,
                    model=str(raw["model"]),
                    dataset=str(raw.get("dataset", body.get("dataset", suite_name))),
                    config=str(raw["config"]),
                    seed=int(seed),
                    args=tuple(str(a) for a in raw.get("args", body.get("args", [])) or ()),
                    roots=tuple((str(k), str(v)) for k, v in (raw.get("roots") or body.get("roots") or {}).items()),
                    setting=raw.get("setting", body.get("setting")),
                    device=str(raw.get("device", body.get("device", "any"))),
                    expected=raw.get("expected", body.get("expected")),
                    demo=bool(raw.get("demo", False)),
                    note=raw.get("note"),
                    label=str(raw.get("label", raw["model"])),
                ))
        labels = [e.label for e in entries if e.seed == entries[0].seed] if entries else []
        if len(set(labels)) != len(labels):
            raise SystemExit(f"error: {path}: suite '{suite_name}' has two entries named "
                             f"{sorted({x for x in labels if labels.count(x) > 1})}; give them distinct `label:`s")
        # Seed-major order: every model's first seed runs before any second seed, so a suite cut short still
        # has every model in its tables.
        entries.sort(key=lambda e: e.seed)
        suites.append(Suite(suite_name, str(body.get("title", suite_name)), entries))
    return suites


def resolve_roots(entry: Entry, data_root: str | None) -> tuple[list[str], str | None]:
    """CLI arguments that set the entry's data roots, or a one-line reason why it cannot run."""
    args: list[str] = []
    for option, folder in entry.roots:
        path = Path(os.path.expandvars(os.path.expanduser(folder)))
        if not path.is_absolute():
            if not data_root:
                return [], f"data root not found: set {DATA_ENV} to the folder holding '{folder}'"
            path = Path(data_root) / path
        if not path.is_dir():
            return [], f"data root not found: {path}"
        args += [f"--{option}", str(path)]
    return args, None


def skip_reason(entry: Entry, data_root: str | None, has_gpu: bool, allow_cpu: bool) -> str | None:
    """Why the entry cannot run here, or None."""
    if not entry.config_path.is_file():
        return f"config {entry.config} does not exist yet"
    _, reason = resolve_roots(entry, data_root)
    if reason:
        return reason
    if entry.device == "gpu" and not has_gpu and not allow_cpu:
        return f"needs a GPU ({entry.expected or 'full-size training'}); --allow-cpu runs it anyway"
    return None
