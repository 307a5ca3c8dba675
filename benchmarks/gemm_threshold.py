"""Where BLAS starts to beat explicit loops: the measurement behind codegen.kernel.GEMM_MIN_SIZE.

    python benchmarks/gemm_threshold.py [--repeats 5] [--threads 1]

For ReLU networks d → h → 10 of growing size, generates the training module twice — every
matrix product as explicit loops, and every one as a BLAS call (the unrolled schedule of small
models turned off, see benchmarks/unroll_threshold.py) — and times ``fit`` (SGD, float32,
20 minibatches per epoch, 5 epochs) at batch sizes 32 and 256. Prints the median time per
optimizer step of each and the ratio loops / BLAS: the threshold is the hidden-layer size
(h·d entries) from which the ratio stays above 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = [(2, 2), (3, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 128), (784, 128)]
BATCHES = [32, 256]


def parse_args(doc: str) -> argparse.Namespace:
    """--repeats and --threads of a threshold benchmark; sets the BLAS thread count (call it
    before NumPy is imported)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    args = parser.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    return args


def main() -> None:
    args = parse_args(__doc__)

    import numpy as np

    import codegen
    from codegen import kernel
    from benchmarks.derive_time import mlp

    out = Path(tempfile.mkdtemp(prefix="symgrad-gemm-"))
    print(f"current GEMM_MIN_SIZE = {kernel.GEMM_MIN_SIZE}; ms per optimizer step, median of "
          f"{args.repeats}")
    print(f"{'d→h→10':>12} {'h·d':>7} {'batch':>6} {'loops':>9} {'BLAS':>9} {'loops/BLAS':>11}")
    rng = np.random.default_rng(0)
    defaults = kernel.GEMM_MIN_SIZE, kernel.UNROLL_MAX_ENTRIES
    for d, h in SIZES:
        modules = {}
        for label, threshold in (("loops", 10**12), ("blas", 1)):
            kernel.GEMM_MIN_SIZE, kernel.UNROLL_MAX_ENTRIES = threshold, 0
            try:
                path = codegen.generate(mlp(d, [h], name=f"gemm_{label}_{d}_{h}"), out,
                                        verify=False)
            finally:
                kernel.GEMM_MIN_SIZE, kernel.UNROLL_MAX_ENTRIES = defaults
            modules[label] = codegen.load_module(path)
        for batch in BATCHES:
            n = 20 * batch
            X = rng.normal(size=(n, d)).astype(np.float32)
            Y = rng.integers(0, 10, n)
            per_step = {}
            for label, module in modules.items():
                params = module.init_params(0, np.float32)
                module.fit(params, X[:batch], Y[:batch], optimizer="sgd", batch_size=batch)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    module.fit(params, X, Y, optimizer="sgd", lr=0.01, epochs=5,
                               batch_size=batch, shuffle=False)
                    times.append((time.perf_counter() - start) / 100)
                per_step[label] = statistics.median(times)
            ratio = per_step["loops"] / per_step["blas"]
            print(f"{f'{d}→{h}→10':>12} {d * h:7d} {batch:6d} {per_step['loops'] * 1e3:9.4f} "
                  f"{per_step['blas'] * 1e3:9.4f} {ratio:11.2f}")


if __name__ == "__main__":
    main()
