"""One suite entry in a fresh process: ``python -m benchmarks.suite.worker <anomaly-zoo CLI arguments>``.

It is the real CLI (``anomaly_zoo.cli.main``) with :class:`~benchmarks.suite.probe.BenchmarkProbe` added as a
trainer callback; a fresh process per entry keeps peak memory and global state (seeds, thread pools, caches)
per model. The runner reads ``test_results.csv`` and the probe's files from the run directory afterwards.
"""

from __future__ import annotations

import sys
import time

from anomaly_zoo.cli import main as cli_main

PROBE = "benchmarks.suite.probe.BenchmarkProbe"


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    cli_main([*args, f"--trainer.callbacks+={PROBE}"])
    print(f"worker: finished in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
