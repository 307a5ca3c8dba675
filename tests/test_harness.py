"""The benchmark harness (benchmarks/run.py): how it interleaves the timed calls.

Implementations that only record when they are called stand in for the real ones, so nothing
here is timed.
"""

from __future__ import annotations

from benchmarks import registry
from benchmarks.run import bench_workload
from benchmarks.workloads import get_workload


def test_each_round_starts_one_implementation_later():
    calls: list[str] = []

    def recorder(name):
        def train(workload, data, params):
            calls.append(name)
            return params, 1.0
        return registry.Impl(name=name, train=train)

    impls = [recorder(name) for name in "ABC"]
    results = bench_workload(get_workload("W1", quick=True), impls, repeats=4, log=lambda _: None)
    warm_up, rounds = calls[:3], calls[3:]
    assert warm_up == ["A", "B", "C"]
    assert [rounds[k:k + 3] for k in range(0, 12, 3)] == [
        ["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"], ["A", "B", "C"]]
    assert all(len(results[name].times) == 4 for name in "ABC")
