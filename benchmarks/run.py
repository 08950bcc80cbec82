"""`make benchmark`: run every benchmark in this folder and show their Markdown reports.

Each ``bench_*.py`` prints its ratios and writes ``benchmarks/results/<name>.md`` (committed, so the
README's numbers can be traced). ``--quick`` is a smoke run: small sizes, reports written to
``--output-dir`` (default: a temporary folder), the committed reports untouched.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK_ARGS = {"bench_metrics.py": ["--quick"], "bench_uniad.py": ["--repeats", "2", "--configs", "demo"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run on small sizes")
    parser.add_argument("--output-dir", type=Path, default=None, help="where reports go (quick default: a temp dir)")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or (Path(tempfile.mkdtemp(prefix="az_bench_")) if args.quick else HERE / "results")
    output_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        extra = QUICK_ARGS.get(script.name, []) if args.quick else []
        command = [sys.executable, str(script), *extra, "--output", str(output_dir / f"{script.stem[6:]}.md")]
        print(f"==> {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
    for report in sorted(output_dir.glob("*.md")):
        print(f"\n---- {report} ----\n{report.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
