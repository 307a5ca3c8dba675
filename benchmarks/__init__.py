"""Benchmark harness and hand-written reference implementations (not part of the
installed package; see benchmarks/README.md)."""
