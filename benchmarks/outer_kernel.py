"""Plain gradient descent on a weight matrix: BLAS + update against the fused ``_outer_acc``.

    python benchmarks/outer_kernel.py [--repeats 7]

The measurement behind ``codegen.kernel.OUTER_KERNEL_MIN_ROWS`` / ``OUTER_KERNEL_MIN_COLS``. For
the gradient shapes of W3–W6 and smaller ones, times a run's worth of steps on one core, four
ways, interleaved: ``np.dot(D.T, V, G)`` (the gradient sum Σ_i d_i v_iᵀ; D: batch × rows, V:
batch × cols); ``_outer_acc(D, V, G, 1, 0)`` (the generated modules' loop, computing the same);
``np.dot`` followed by the SGD update loop W ← W − (lr/b)·G; and ``_outer_acc(D, V, W, -lr/b,
1)``, the update fused into the same pass, as generated ``_step`` does under gd/sgd. V is read
either from a 60000-row array, one minibatch after another (``fit(shuffle=False)``: rows come
from memory), or from one batch-sized array (``shuffle=True`` gathers each minibatch into a
buffer first: rows are in cache). Prints medians in ms and the ratio (np.dot + update) / fused.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (rows, cols, batch, steps): W5, W4, W6 and W3's gradients, then smaller ones
SHAPES = [(64, 784, 32, 1875), (128, 784, 32, 1875), (128, 784, 256, 235), (10, 784, 100, 1000),
          (64, 512, 32, 1875), (64, 256, 32, 1875), (32, 784, 64, 1000), (10, 128, 32, 1875)]


def runners(outer_acc):
    @njit
    def dot(V, D, G, W, batch, steps, lr):
        for s in range(steps):
            start = (s * batch) % (V.shape[0] - batch + 1)
            np.dot(D.T, V[start:start + batch], G)

    @njit
    def kernel(V, D, G, W, batch, steps, lr):
        for s in range(steps):
            start = (s * batch) % (V.shape[0] - batch + 1)
            outer_acc(D, V[start:start + batch], G, 1.0, 0.0)

    @njit(fastmath={"reassoc", "contract"})
    def dot_update(V, D, G, W, batch, steps, lr):
        w, g = W.reshape(W.size), G.reshape(G.size)
        c = np.float32(lr / batch)
        for s in range(steps):
            start = (s * batch) % (V.shape[0] - batch + 1)
            np.dot(D.T, V[start:start + batch], G)
            for q in range(w.size):
                w[q] -= c * g[q]

    @njit
    def fused(V, D, G, W, batch, steps, lr):
        for s in range(steps):
            start = (s * batch) % (V.shape[0] - batch + 1)
            outer_acc(D, V[start:start + batch], W, -lr / batch, 1.0)

    return {"np.dot": dot, "_outer_acc": kernel, "np.dot + update": dot_update,
            "fused": fused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import codegen
    from benchmarks.impl_symgrad import spec_for
    from benchmarks.workloads import WORKLOADS

    out = Path(tempfile.mkdtemp(prefix="symgrad-outer-"))
    module = codegen.load_module(codegen.generate(spec_for(WORKLOADS["W5"]), out, verify=False))
    funcs = runners(module._outer_acc)
    rng = np.random.default_rng(0)
    big = rng.normal(size=(60000, 784)).astype(np.float32)
    print(f"{'rows×cols':>10} {'batch':>5} {'rows from':>9} " +
          " ".join(f"{name:>16}" for name in funcs) + "   (np.dot + update)/fused  (ms, median)")
    for rows, cols, batch, steps in SHAPES:
        D = rng.normal(size=(batch, rows)).astype(np.float32)
        for where, V in (("memory", big[:, :cols].copy()), ("cache", big[:batch, :cols].copy())):
            G = np.empty((rows, cols), np.float32)
            W = np.zeros((rows, cols), np.float32)
            times = {name: [] for name in funcs}
            for name, f in funcs.items():
                f(V, D, G, W, batch, 1, 0.01)
            for _ in range(args.repeats):
                for name, f in funcs.items():
                    start = time.perf_counter()
                    f(V, D, G, W, batch, steps, 0.01)
                    times[name].append(time.perf_counter() - start)
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            print(f"{rows:>4}×{cols:<5} {batch:>5} {where:>9} " +
                  " ".join(f"{med[name]:>16.1f}" for name in funcs) +
                  f"   {med['np.dot + update'] / med['fused']:.2f}")


if __name__ == "__main__":
    main()
