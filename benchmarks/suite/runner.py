"""Run suite entries through the real CLI (one subprocess each), with reuse, progress and failure isolation.

Every entry ends as one :class:`Record` (``record.json`` in its run directory): ``ok`` (with the run's
``test_results.csv`` and the probe's timings), ``reused`` (an earlier ``ok`` run with the same key),
``failed`` (with the error line; the next entry still runs) or ``skipped`` (with the reason).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.suite.cache import code_version, run_key
from benchmarks.suite.environment import git_commit
from benchmarks.suite.spec import DATA_ENV, ROOT, Entry, resolve_roots, skip_reason

DEFAULT_RUNS_DIR = ROOT / "results" / "benchmarks"


@dataclass
class Record:
    id: str
    suite: str
    model: str
    dataset: str
    seed: int
    config: str
    status: str  # ok | reused | failed | skipped
    reason: str = ""
    key: str = ""
    run_dir: str = ""
    duration_s: float = 0.0
    finished: str = ""
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status in ("ok", "reused")

    def results(self) -> pd.DataFrame | None:
        """The run's per-category table (``test_results.csv``), or None."""
        if not self.succeeded:
            return None
        found = sorted(Path(self.run_dir).rglob("test_results.csv"))
        return pd.read_csv(found[-1], index_col=0) if found else None


def stop_children_on_sigterm() -> None:
    """``kill <runner pid>`` ends the running entry too: SIGTERM becomes KeyboardInterrupt, on which
    ``subprocess.run`` kills its child (otherwise the worker would keep training as an orphan)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def error_line(text: str) -> str:
    """The line that says what went wrong: the CLI's ``error:`` line, else the exception line, else the last."""
    raw = [line.rstrip() for line in text.splitlines() if line.strip()]
    lines = [line.strip() for line in raw]
    for pattern in (r"^error:", r"^(\w+\.)*\w*(Error|Exception|Interrupt)\b.*:"):
        matches = [i for i, line in enumerate(lines) if re.match(pattern, line)]
        if matches:
            i = matches[-1]
            line = lines[i]
            if line.endswith(":") and i + 1 < len(raw):
                # jsonargparse explains below the error line; its most indented line is the specific cause.
                following = raw[i + 1 : i + 13]
                cause = max(following, key=lambda s: len(s) - len(s.lstrip()))
                line = f"{line} {cause.strip()}"
            return line[:400]
    return (lines[-1] if lines else "no output")[:400]


@dataclass
class Runner:
    runs_dir: Path = DEFAULT_RUNS_DIR
    data_root: str | None = None
    force: bool = False
    allow_cpu: bool = False
    timeout: float | None = None
    quiet: bool = False
    extra_args: tuple[str, ...] = ()
    threads: int | None = None  # torch CPU threads per run (OMP_NUM_THREADS); None = torch's default
    python: str = sys.executable

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)
        # Taken once per config per runner: the code a suite run started with keys all of its runs, even
        # while files change underneath (a shared work tree), so a reuse check and the run agree.
        self._code_versions: dict[Path, str] = {}
        if self.data_root is None:
            self.data_root = os.environ.get(DATA_ENV)
        try:
            import torch

            self.has_gpu = torch.cuda.is_available()
        except ImportError:  # pragma: no cover - torch is a dependency
            self.has_gpu = False

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    # ---- one entry ------------------------------------------------------------------------------
    def cli_args(self, entry: Entry) -> list[str]:
        roots, _ = resolve_roots(entry, self.data_root)
        return [*entry.args, *roots, *self.extra_args]  # args may switch the DataModule: roots after

    def code_version(self, entry: Entry) -> str:
        if entry.config_path not in self._code_versions:
            self._code_versions[entry.config_path] = code_version(entry.config_path)
        return self._code_versions[entry.config_path]

    def key(self, entry: Entry) -> str:
        # The thread count changes the timings, not the metrics; it is in the key so one table never mixes them.
        return run_key(entry, self.cli_args(entry), self.code_version(entry), self.threads)

    def run_dir(self, entry: Entry, key: str) -> Path:
        return self.runs_dir / entry.suite / (entry.label or entry.model) / f"seed{entry.seed}-{key}"

    def previous(self, entry: Entry) -> Record | None:
        """A finished run with the same key (reused unless ``force``)."""
        path = self.run_dir(entry, self.key(entry)) / "record.json"
        if not path.is_file():
            return None
        record = Record(**json.loads(path.read_text(encoding="utf-8")))
        if record.status != "ok" or record.results() is None:
            return None
        record.status = "reused"
        return record

    def latest(self, entry: Entry, mark_stale: bool = True) -> Record | None:
        """The newest finished run of this entry under any key (e.g. an older code version), marked as such
        unless ``mark_stale`` is False (``--tables-only``: the runs' own code versions are in runs.csv)."""
        folder = self.runs_dir / entry.suite / (entry.label or entry.model)
        found = []
        for path in folder.glob(f"seed{entry.seed}-*/record.json"):
            record = Record(**json.loads(path.read_text(encoding="utf-8")))
            if record.status == "ok" and record.id == entry.id and record.config == entry.config \
                    and record.results() is not None:
                found.append(record)
        if not found:
            return None
        record = max(found, key=lambda r: r.finished)
        record.status = "reused"
        if mark_stale and record.key != self.key(entry):
            record.reason = (f"from an earlier run ({record.finished}, code {record.probe.get('code_version', '?')}); "
                             "the code or config changed since")
        return record

    def run(self, entry: Entry) -> Record:
        base = dict(id=entry.id, suite=entry.suite, model=entry.model, dataset=entry.dataset,
                    seed=entry.seed, config=entry.config)
        reason = skip_reason(entry, self.data_root, self.has_gpu, self.allow_cpu)
        if reason:
            return Record(**base, status="skipped", reason=reason)
        if not self.force and (old := self.previous(entry)) is not None:
            return old
        args = self.cli_args(entry)
        key = self.key(entry)
        run_dir = self.run_dir(entry, key)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        command = [
            self.python, "-m", "benchmarks.suite.worker", "fit",
            "--config", str(entry.config_path),
            "--seed_everything", str(entry.seed),
            *args,
            "--trainer.default_root_dir", str(run_dir),
            "--trainer.enable_progress_bar", "false",
            "--test_after_fit", "true",
        ]
        env = {**os.environ, "ANOMALY_ZOO_PROBE_DIR": str(run_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
               "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        (run_dir / "command.txt").write_text(" ".join(command) + "\n", encoding="utf-8")
        start = time.perf_counter()
        with open(run_dir / "log.txt", "w", encoding="utf-8") as log:
            try:
                proc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=self.timeout)
                returncode = proc.returncode
            except subprocess.TimeoutExpired:
                returncode = None
        duration = time.perf_counter() - start
        text = (run_dir / "log.txt").read_text(encoding="utf-8", errors="replace")
        probe_path = run_dir / "probe.json"
        probe = json.loads(probe_path.read_text(encoding="utf-8")) if probe_path.is_file() else {}
        record = Record(**base, status="ok", key=key, run_dir=str(run_dir), duration_s=duration,
                        finished=time.strftime("%Y-%m-%d %H:%M:%S"), probe=probe)
        if returncode is None:
            record.status, record.reason = "failed", f"timed out after {format_duration(self.timeout or 0)}"
        elif returncode != 0:
            record.status, record.reason = "failed", error_line(text)
        elif record.results() is None:
            record.status, record.reason = "failed", "the run wrote no test_results.csv"
        record.probe["code_version"] = self.code_version(entry)
        record.probe["git_commit"] = git_commit()
        (run_dir / "record.json").write_text(json.dumps(asdict(record), indent=1), encoding="utf-8")
        return record

    # ---- a whole selection ----------------------------------------------------------------------
    def run_all(self, entries: list[Entry], on_record: Callable[[list[Record]], None] | None = None) -> list[Record]:
        """Run every entry in order, printing progress (entry, elapsed, ETA) and a summary at the end.

        ``on_record(records so far)`` is called after each entry that ran (e.g. to rewrite the tables, so an
        interrupted suite leaves its finished entries tabulated).
        """
        start = time.perf_counter()
        records: list[Record] = []
        durations: dict[str, list[float]] = {}
        to_run = [e for e in entries if not skip_reason(e, self.data_root, self.has_gpu, self.allow_cpu)
                  and (self.force or self.previous(e) is None)]
        pending = {e.id for e in to_run}
        self.say(f"{len(entries)} entries: {len(to_run)} to run, "
                 f"{len(entries) - len(to_run)} skipped or reused")
        for i, entry in enumerate(entries, 1):
            if entry.id in pending:
                self.say(f"[{i}/{len(entries)}] {entry.id}: running ({entry.config}) ...")
            record = self.run(entry)
            records.append(record)
            pending.discard(entry.id)
            if record.status in ("ok", "failed"):
                durations.setdefault(entry.model, []).append(record.duration_s)
            elapsed = time.perf_counter() - start
            eta = self._eta(pending, entries, durations)
            detail = {"ok": f"done in {format_duration(record.duration_s)}", "reused": f"reused ({record.run_dir})",
                      "failed": f"FAILED: {record.reason}", "skipped": f"skipped: {record.reason}"}[record.status]
            self.say(f"[{i}/{len(entries)}] {entry.id}: {detail} | elapsed {format_duration(elapsed)}"
                     + (f", ETA {eta}" if pending else ""))
            if on_record is not None and record.status in ("ok", "failed"):
                on_record(records)
        self.say(summary(records, time.perf_counter() - start))
        return records

    @staticmethod
    def _eta(pending: set[str], entries: list[Entry], durations: dict[str, list[float]]) -> str:
        if not pending:
            return "0s"
        every = [d for ds in durations.values() for d in ds]
        if not every:
            return "unknown (no entry finished yet)"
        total = 0.0
        for entry in entries:
            if entry.id in pending:
                own = durations.get(entry.model) or every
                total += sum(own) / len(own)
        return f"~{format_duration(total)}"


def summary(records: list[Record], seconds: float) -> str:
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "reused", "failed", "skipped")}
    lines = [f"summary: {counts['ok']} ran, {counts['reused']} reused, {counts['failed']} failed, "
             f"{counts['skipped']} skipped in {format_duration(seconds)}"]
    lines += [f"  failed  {r.id}: {r.reason}" for r in records if r.status == "failed"]
    skipped: dict[str, list[str]] = {}
    for r in records:
        if r.status == "skipped":
            skipped.setdefault(r.reason, []).append(r.id)
    lines += [f"  skipped {', '.join(ids)}: {reason}" for reason, ids in skipped.items()]
    return "\n".join(lines)


def collect(records: list[Record]) -> pd.DataFrame:
    """Every run's per-category table in one long frame: one row per (entry, seed, category).

    Failed and skipped entries appear as one row with ``category`` NaN, their status and reason.
    """
    rows = []
    for r in records:
        base = {"suite": r.suite, "model": r.model, "dataset": r.dataset, "seed": r.seed, "config": r.config,
                "status": "ok" if r.succeeded else r.status, "reason": r.reason,
                "code version": r.probe.get("code_version", ""), "finished": r.finished}
        table = r.results()
        if table is None:
            rows.append({**base, "category": None})
            continue
        for category, values in table.iterrows():
            rows.append({**base, "category": category, **values.to_dict()})
    return pd.DataFrame(rows)
