"""Which way round to multiply the input batch by a weight matrix: the measurement behind
codegen.kernel.TRANSPOSED_PRODUCT_MAX_ROWS.

    python benchmarks/gemm_layout.py [--repeats 5] [--threads 1]

The first layer of a network computes z = W x for every sample of a batch X (n, d) — d = 784,
rows streamed from a 60000-row data set as in training. The generated ``_step`` can ask BLAS
for X Wᵀ (n, h) directly, or for W Xᵀ (h, n) into a scratch buffer and copy its transpose into
the (n, h) buffer (``_transpose_into``). Prints µs per product (the median of ``--repeats``
interleaved runs of 400 batches each) and the ratio: above 1, the transposed form is faster.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gemm_threshold import parse_args  # noqa: E402

BATCHES = [8, 16, 32, 64, 128, 256]
WIDTHS = [16, 64, 128, 256]
STEPS = 400


def main() -> None:
    args = parse_args(__doc__)

    import numpy as np
    from numba import njit

    @njit(cache=True)
    def direct(X, W, Z, batch, steps):
        n = X.shape[0]
        for s in range(steps):
            start = (s * batch) % (n - batch + 1)
            np.dot(X[start:start + batch], W.T, Z[:batch])

    @njit(cache=True)
    def transposed(X, W, Z, P, batch, steps):
        n, h = X.shape[0], W.shape[0]
        for s in range(steps):
            start = (s * batch) % (n - batch + 1)
            pt = P.reshape(P.size)[:h * batch].reshape((h, batch))
            np.dot(W, X[start:start + batch].T, pt)
            for j in range(h):  # the module's _transpose_into
                for i in range(batch):
                    Z[i, j] = pt[j, i]

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60000, 784)).astype(np.float32)
    print(f"d = 784, float32; µs per product, median of {args.repeats}")
    print(f"{'batch':>6} {'h':>5} {'X Wᵀ':>9} {'(W Xᵀ)ᵀ':>9} {'ratio':>7}")
    for batch in BATCHES:
        for h in WIDTHS:
            W = rng.normal(size=(h, 784)).astype(np.float32)
            Z = np.empty((batch, h), np.float32)
            P = np.empty((batch, h), np.float32)
            runs = {"direct": lambda: direct(X, W, Z, batch, STEPS),
                    "transposed": lambda: transposed(X, W, Z, P, batch, STEPS)}
            for run in runs.values():
                run()
            times = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - start) / STEPS * 1e6)
            a, b = (statistics.median(times[name]) for name in runs)
            print(f"{batch:>6} {h:>5} {a:>9.1f} {b:>9.1f} {a / b:>7.2f}")


if __name__ == "__main__":
    main()
