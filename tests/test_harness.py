"""The benchmark harness (benchmarks/run.py): how it interleaves the timed calls.

Implementations that only record when they are called stand in for the real ones, so nothing
here is timed.
"""

from __future__ import annotations

from benchmarks import registry
from benchmarks.run import bench_workload
from benchmarks.workloads import get_workload


def test_rounds_run_every_implementation_once_in_varying_orders():
    calls: list[str] = []

    def recorder(name):
        def train(workload, data, params):
            calls.append(name)
            return params, 1.0
        return registry.Impl(name=name, train=train)

    names = "ABCDE"
    results = bench_workload(get_workload("W1", quick=True), [recorder(n) for n in names],
                             repeats=5, log=lambda _: None)
    assert calls[:5] == list(names)  # the warm-up calls, in registry order
    rounds = [calls[k:k + 5] for k in range(5, 30, 5)]
    assert all(sorted(r) == list(names) for r in rounds)
    # the implementation run just before each one (in its round, or at the end of the last)
    before = {n: {prev for prev, cur in zip(calls[4:], calls[5:]) if cur == n} for n in names}
    assert all(len(prevs) >= 2 for prevs in before.values()), before
    assert all(len(results[n].times) == 5 for n in names)
