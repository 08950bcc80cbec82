"""``make demo``: train and test every model's demo config on the synthetic data, print one side-by-side table.

    python -m benchmarks.suite.demo                  # the suite's `demo: true` entries (UniAD, MoECLIP, AnomalyMoE)
    python -m benchmarks.suite.demo --model uniad    # one model (any model of the synthetic suite)

The runs are the synthetic suite's entries at its first seed, run fresh (never reused) under ``results/demo/``;
an entry whose demo config does not exist yet is reported as missing and the others still run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.suite.runner import Runner, format_duration, stop_children_on_sigterm
from benchmarks.suite.spec import DEFAULT_SUITE, ROOT, load_suite
from benchmarks.suite.tables import HEADLINE, run_stats

SYNTHETIC = "synthetic"


def side_by_side(records) -> str:
    """Per model: mean I-AUROC, P-AUROC, AUPRO, mAD (over categories), train time, ms/image."""
    stats = run_stats(records).set_index("model") if any(r.succeeded for r in records) else None
    head = ["model", *HEADLINE, "train time", "ms/image"]
    lines = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * (len(head) - 1)]
    for r in records:
        table = r.results()
        if table is None:
            lines.append(f"| {r.model} | **{r.status}**: {r.reason} |" + " |" * (len(head) - 2))
            continue
        mean = table.loc["mean"]
        cells = ["–" if np.isnan(mean.get(c, np.nan)) else f"{mean[c]:.1f}" for c in HEADLINE]
        s = stats.loc[r.model]
        cells += [f"{s['train time (s)']:.1f} s", f"{s['ms/image']:.2f}"]
        lines.append(f"| {r.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="one model of the synthetic suite (default: the demo models)")
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default/0: torch's; make demo uses 1)")
    args = parser.parse_args(argv)
    stop_children_on_sigterm()
    synthetic = next((s for s in load_suite(args.suite) if s.name == SYNTHETIC), None)
    if synthetic is None or not synthetic.entries:
        print(f"error: {args.suite} has no '{SYNTHETIC}' suite", file=sys.stderr)
        return 2
    first_seed = synthetic.entries[0].seed
    entries = [e for e in synthetic.entries if e.seed == first_seed]
    if args.model:
        known = [e.model for e in entries]
        entries = [e for e in entries if e.model == args.model]
        if not entries:
            print(f"error: unknown MODEL '{args.model}'; the demo knows: {', '.join(known)}", file=sys.stderr)
            return 2
    else:
        entries = [e for e in entries if e.demo]
    start = time.perf_counter()
    runner = Runner(runs_dir=args.runs_dir, force=True, threads=args.threads)
    print(f"make demo: {', '.join(e.model for e in entries)} on the built-in synthetic data (seed {first_seed}); "
          f"runs and logs in {args.runs_dir}", flush=True)
    records = runner.run_all(entries)
    print(f"\nSynthetic data, mean over categories (%), one model per row; total {format_duration(time.perf_counter() - start)}:\n")
    print(side_by_side(records))
    ran = [r for r in records if r.succeeded]
    if ran:
        print("\nPer-category tables: " + ", ".join(
            str(next(Path(r.run_dir).rglob("test_results.md"), r.run_dir)) for r in ran))
    missing = [r for r in records if r.status == "skipped"]
    if missing:
        print("Not available yet: " + "; ".join(f"{r.model} ({r.reason})" for r in missing))
    failed = [r for r in records if r.status == "failed"]
    for r in failed:
        print(f"{r.model} failed: {r.reason} (log: {r.run_dir}/log.txt)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
