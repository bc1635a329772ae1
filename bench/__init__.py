"""Benchmarks for fused-losses: ``pytest bench/`` (pytest-benchmark) and ``python -m bench.report``."""
