"""How much of a training run is matrix products: the profile behind the W3–W6 comparisons.

    python benchmarks/gemm_share.py [--repeats 5]

For each MNIST-sized workload (W3–W6), times the matrix products one run makes — the same
``np.dot(a, b, out)`` calls and shapes as the generated ``_step`` (forward, δ back through W2,
both weight gradients), one call per optimizer step, on one core with one BLAS thread — and
prints the median. Compare with the whole run's median in RESULTS.md: what is left is
everything else (elementwise loops, softmax, the optimizer update, calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workloads import WORKLOADS  # noqa: E402


@njit(cache=True)
def _two_layer(X, W1, W2, Z1, Z, DA, G1, G2, batch, steps):
    n = X.shape[0]
    for s in range(steps):
        start = (s * batch) % (n - batch + 1)
        Xb = X[start:start + batch]
        np.dot(Xb, W1.T, Z1)  # z1 = W1 x
        np.dot(Z1, W2.T, Z)  # z = W2 a
        np.dot(Z, W2, DA)  # δ_a = W2ᵀ δ_z
        np.dot(Z.T, Z1, G2)  # ∂L/∂W2 = Σ δ_z aᵀ
        np.dot(DA.T, Xb, G1)  # ∂L/∂W1 = Σ δ_z1 xᵀ


@njit(cache=True)
def _one_layer(X, W, Z, G, batch, steps):
    n = X.shape[0]
    for s in range(steps):
        start = (s * batch) % (n - batch + 1)
        Xb = X[start:start + batch]
        np.dot(Xb, W.T, Z)  # z = W x
        np.dot(Z.T, Xb, G)  # ∂L/∂W = Σ δ_z xᵀ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for name in ("W3", "W4", "W5", "W6"):
        w = WORKLOADS[name]
        d, h, k, b = w.n_in, w.n_hidden, w.n_out, w.batch
        X = rng.normal(size=(w.n_samples, d)).astype(np.float32)
        f32 = np.float32
        if h == 0:
            arrays = (X, rng.normal(size=(k, d)).astype(f32), np.empty((b, k), f32),
                      np.empty((k, d), f32))
            run = _one_layer
        else:
            arrays = (X, rng.normal(size=(h, d)).astype(f32), rng.normal(size=(k, h)).astype(f32),
                      np.empty((b, h), f32), np.empty((b, k), f32), np.empty((b, h), f32),
                      np.empty((h, d), f32), np.empty((k, h), f32))
            run = _two_layer
        run(*arrays, b, 1)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(*arrays, b, w.steps)
            times.append(time.perf_counter() - start)
        print(f"{name}: the run's matrix products alone: {statistics.median(times) * 1e3:8.1f} ms "
              f"(median of {args.repeats}; {w.steps} steps of batch {b})")


if __name__ == "__main__":
    main()
