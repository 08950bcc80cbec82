"""Benchmarks: the model suite (``python -m benchmarks``, ``make benchmark``) and the micro-benchmarks (``bench_*.py``)."""
