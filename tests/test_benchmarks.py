"""`make benchmark` smoke run (slow: `make test-all`): every benchmark runs and writes its report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_benchmarks_write_their_reports(tmp_path: Path):
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--output-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    assert set(reports) == {"metrics.md", "uniad.md"}
    assert "speed-up" in reports["metrics.md"] and "×" in reports["uniad.md"]
