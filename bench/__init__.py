"""Benchmarks, one script per area; run with `make bench` (see docs/benchmarks.md)."""
