"""The unrolled schedule of small models: the measurement behind codegen.kernel.UNROLL_MAX_ENTRIES
and FEATURE_MAJOR_MIN_WIDTH.

    python benchmarks/unroll_threshold.py [--repeats 5] [--threads 1]

For ReLU networks d → h → 10 (softmax cross-entropy) of growing size, and linear regressions on
d features, generates the training module three ways — the unrolled schedule reading the batch
feature-major, the unrolled schedule reading it through a flat sample-major view, and the
schedule of larger models (loop nests into buffers, BLAS from GEMM_MIN_SIZE entries) — and
times ``fit`` (float32; SGD in minibatches of 32 over 20 batches, and full-batch gradient
descent on 100 samples) after one call that compiles it. Prints the median time per optimizer
step of each, the ratio of the larger models' schedule to the unrolled one, and the first call
(compilation, cold cache) of each. The unrolled schedule should win up to UNROLL_MAX_ENTRIES
parameter entries, and the feature-major read from FEATURE_MAJOR_MIN_WIDTH features.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gemm_threshold import parse_args  # noqa: E402

SIZES = [(2, 2), (3, 4), (4, 6), (4, 8), (8, 8), (16, 8)]
WIDTHS = [2, 3, 4, 8]
SCHEDULES = {"feature-major": (10**6, 1), "sample-major": (10**6, 10**6), "nests": (0, 10**6)}


def main() -> None:
    args = parse_args(__doc__)

    import numpy as np

    import codegen
    from benchmarks.derive_time import mlp
    from codegen import kernel
    from codegen.lower import lower
    from symbolic import Spec, derive

    def linear(d: int, name: str) -> Spec:
        return Spec.build(name=name, inputs={"x": d}, targets={"y": 1},
                          params={"w": {"shape": [d]}, "b": {}}, model={"z": "w @ x + b"},
                          loss="mse(z, y)")

    out = Path(tempfile.mkdtemp(prefix="symgrad-unroll-"))
    defaults = (kernel.UNROLL_MAX_ENTRIES, kernel.FEATURE_MAJOR_MIN_WIDTH,
                kernel.UNROLL_MAX_STATEMENTS)
    print(f"current UNROLL_MAX_ENTRIES = {defaults[0]}, FEATURE_MAJOR_MIN_WIDTH = {defaults[1]}, "
          f"UNROLL_MAX_STATEMENTS = {defaults[2]} (not applied here); µs per optimizer step, "
          f"median of {args.repeats}; first call (compile) in s")
    print(f"{'model':>16} {'entries':>7} {'stmts':>5} {'run':>10} "
          + " ".join(f"{s:>13}" for s in SCHEDULES)
          + f" {'nests/unrolled':>14} {'compile (s)':>20}")
    rng = np.random.default_rng(0)
    models = [(f"mlp {d}→{h}→10", h * d + h + 10 * h + 10, lambda n, d=d, h=h: mlp(d, [h], name=n),
               d) for d, h in SIZES]
    models += [(f"linear {d}→1", d + 1, lambda n, d=d: linear(d, n), d) for d in WIDTHS]
    for label, entries, build, d in models:
        modules, compile_s, statements = {}, {}, 0
        for schedule, (max_entries, width) in SCHEDULES.items():
            kernel.UNROLL_MAX_ENTRIES, kernel.FEATURE_MAJOR_MIN_WIDTH = max_entries, width
            kernel.UNROLL_MAX_STATEMENTS = 10**6
            try:
                name = f"u_{schedule.replace('-', '_')}_{label.split()[0]}_{d}_{entries}"
                path = codegen.generate(build(name), out, verify=False)
                if schedule == "feature-major":
                    statements = kernel.loop_statements(lower(derive(build(name)), name).kernel)
            finally:
                (kernel.UNROLL_MAX_ENTRIES, kernel.FEATURE_MAJOR_MIN_WIDTH,
                 kernel.UNROLL_MAX_STATEMENTS) = defaults
            modules[schedule] = codegen.load_module(path)
        for run, batch, n in (("sgd b32", 32, 640), ("gd n100", 0, 100)):
            X = rng.normal(size=(n, d)).astype(np.float32)
            Y = rng.integers(0, 10, n) if label.startswith("mlp") else \
                rng.normal(size=n).astype(np.float32)
            optimizer = "sgd" if batch else "gd"
            steps = 5 * (n // batch) if batch else 200
            per_step = {}
            for schedule, module in modules.items():
                params = module.init_params(0, np.float32)
                start = time.perf_counter()
                module.fit(params, X, Y, optimizer=optimizer, batch_size=batch)
                compile_s.setdefault(schedule, time.perf_counter() - start)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    module.fit(params, X, Y, optimizer=optimizer, lr=0.01, batch_size=batch,
                               epochs=5 if batch else 200, shuffle=False)
                    times.append((time.perf_counter() - start) / steps)
                per_step[schedule] = statistics.median(times)
            best = min(per_step["feature-major"], per_step["sample-major"])
            print(f"{label:>16} {entries:7d} {statements:5d} {run:>10} "
                  + " ".join(f"{per_step[s] * 1e6:13.3f}" for s in SCHEDULES)
                  + f" {per_step['nests'] / best:14.2f} "
                  + f"{'/'.join(f'{compile_s[s]:.1f}' for s in SCHEDULES):>20}")


if __name__ == "__main__":
    main()
