"""``python -m benchmarks``: the same as ``python benchmarks/run.py`` (``make benchmark``)."""

from benchmarks.run import main

raise SystemExit(main())
