"""`make benchmark`: run every benchmark in this folder and collect their Markdown reports.

Each ``bench_*.py`` prints its ratios and writes ``benchmarks/results/<name>.md``. The results tables
of the detectors on the real datasets need the datasets and GPUs; see the README.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"==> {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script), *sys.argv[1:]], cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
    for report in sorted((HERE / "results").glob("*.md")):
        print(f"\n---- {report.relative_to(HERE.parent)} ----\n{report.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
