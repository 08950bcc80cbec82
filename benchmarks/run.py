"""`make benchmark`: run the suite in ``benchmarks/suite.yaml`` and regenerate ``benchmarks/results/``.

    python -m benchmarks                         # every entry (dataset suites skip themselves without data / GPU)
    python -m benchmarks --only 'synthetic/*'    # a selection (glob or substring of `suite/model/seedN`, comma-separated)
    python -m benchmarks --force                 # re-run entries that a finished run with the same key would cover
    python -m benchmarks --list                  # what would run, what is reused, what is skipped and why
    python -m benchmarks --tables-only           # rebuild benchmarks/results/ from the finished runs, run nothing
    ANOMALY_ZOO_DATA=/data python -m benchmarks  # dataset roots under /data, by the publishers' folder names
    python -m benchmarks --micro [--quick]       # the micro-benchmarks (bench_*.py: metrics, UniAD speed) instead

Each entry runs ``anomaly-zoo fit --config <config> --seed_everything <seed> ... --test_after_fit true`` in its
own process (``benchmarks/suite/worker.py``) under ``results/benchmarks/`` (not committed); the tables and plots
in ``benchmarks/results/`` (committed) are rebuilt from every entry's latest record, so ``--only`` refreshes
part of a table and keeps the rest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `python benchmarks/run.py` as well as `python -m benchmarks`
    sys.path.insert(0, str(HERE.parent))

from benchmarks.suite.report import write_reports  # noqa: E402
from benchmarks.suite.runner import DEFAULT_RUNS_DIR, Record, Runner, stop_children_on_sigterm  # noqa: E402
from benchmarks.suite.spec import DEFAULT_SUITE, load_suite, skip_reason  # noqa: E402

QUICK_ARGS = {"bench_metrics.py": ["--quick"], "bench_uniad.py": ["--repeats", "2", "--configs", "demo"],
              "bench_data_cache.py": ["--quick"], "bench_predict.py": ["--rounds", "1"]}


def run_micro(quick: bool, output_dir: Path | None) -> int:
    """The ``bench_*.py`` micro-benchmarks; ``quick`` = small sizes into a temporary folder."""
    output_dir = output_dir or (Path(tempfile.mkdtemp(prefix="az_bench_")) if quick else HERE / "results")
    output_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        if quick and script.name not in QUICK_ARGS:
            print(f"==> {script.name}: skipped in --quick (no small-size mode known for it)", flush=True)
            continue
        extra = QUICK_ARGS.get(script.name, []) if quick else []
        # Scripts with an --output option write where we say; the others write their own report in results/.
        takes_output = '"--output"' in script.read_text(encoding="utf-8")
        output = ["--output", str(output_dir / f"{script.stem[6:]}.md")] if takes_output else []
        command = [sys.executable, str(script), *extra, *output]
        print(f"==> {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
    for report in sorted(output_dir.glob("*.md")):
        print(f"\n---- {report} ----\n{report.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="suite YAML (default: benchmarks/suite.yaml)")
    p.add_argument("--only", default=None, help="run only matching entries (glob or substring of suite/model/seedN)")
    p.add_argument("--force", action="store_true", help="re-run selected entries even when a finished run matches")
    p.add_argument("--list", action="store_true", help="list entries with their state and exit")
    p.add_argument("--output-dir", type=Path, default=None, help="tables and plots (default: benchmarks/results)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="run directories (default: results/benchmarks)")
    p.add_argument("--data-root", default=None, help="folder holding the datasets (default: $ANOMALY_ZOO_DATA)")
    p.add_argument("--allow-cpu", action="store_true", help="run `device: gpu` entries on CPU too")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default/0: torch's; make uses 1, much faster on a shared machine)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per entry before it is recorded as failed")
    p.add_argument("--tables-only", action="store_true",
                   help="run nothing: rebuild the tables and plots from each entry's newest finished run")
    p.add_argument("--micro", action="store_true", help="run the bench_*.py micro-benchmarks instead of the suite")
    p.add_argument("--quick", action="store_true", help="with --micro: small sizes, reports to a temporary folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stop_children_on_sigterm()
    if args.micro:
        return run_micro(args.quick, args.output_dir)
    suites = load_suite(args.suite)
    entries = [e for s in suites for e in s.entries]
    runner = Runner(runs_dir=args.runs_dir, data_root=args.data_root, force=args.force, allow_cpu=args.allow_cpu,
                    timeout=args.timeout, threads=args.threads)
    selected = [e for e in entries if e.matches(args.only)]
    if args.only and not selected:
        print(f"error: --only '{args.only}' matches none of: {', '.join(e.id for e in entries)}", file=sys.stderr)
        return 2
    if args.list:
        for e in entries:
            reason = skip_reason(e, runner.data_root, runner.has_gpu, runner.allow_cpu)
            state = (f"skipped: {reason}" if reason else
                     "reused" if not args.force and runner.previous(e) else "to run")
            print(f"{e.id:45s} {'' if e.matches(args.only) else '(not selected) '}{state}")
        return 0
    output_dir = args.output_dir or HERE / "results"
    selected_ids = {e.id for e in selected}

    def tabulate(done: list[Record]) -> list[Path]:
        ran = {r.id: r for r in done}
        records: list[Record] = []
        for e in entries:  # entries not (yet) run here keep their latest finished run in the tables
            if e.id in ran:
                records.append(ran[e.id])
                continue
            reason = skip_reason(e, runner.data_root, runner.has_gpu, runner.allow_cpu)
            old = None if reason else (runner.previous(e) or runner.latest(e, mark_stale=not args.tables_only))
            waiting = "not run yet" + ("" if e.id in selected_ids else " (not selected)")
            records.append(old or Record(id=e.id, suite=e.suite, model=e.model, dataset=e.dataset, seed=e.seed,
                                         config=e.config, status="skipped", reason=reason or waiting))
        return write_reports(records, suites, output_dir)

    done = [] if args.tables_only else runner.run_all(selected, on_record=tabulate)
    written = tabulate(done)
    print(f"tables and plots written to {output_dir} ({len(written)} files + plots/)")
    return 1 if any(r.status == "failed" for r in done) else 0


if __name__ == "__main__":
    raise SystemExit(main())
