"""Benchmark harness: every registered implementation on every workload.

    python benchmarks/run.py [--workloads W1,W2] [--repeats 5] [--out benchmarks/RESULTS.md]
                             [--quick] [--impls numba-dot,torch] [--plugin my.module]

Per workload: each available implementation is called once to compile/warm up
(its first-call time is reported separately), then ``--repeats`` interleaved
timed rounds (A B C A B C ...).  Reported: median and min-max wall time, ratio to
the Numba np.dot reference, GFLOP/s (W3-W6) next to a float32 GEMM peak measured
in the same run, and a correctness check: every implementation's loss must match
the reference within 1e-3 relative (``FAIL`` otherwise; exit status 1).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _early_threads() -> None:
    """``--threads N`` must act before NumPy/SciPy/torch/XLA start their pools."""
    argv = sys.argv[1:]
    n = None
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    if n:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = n
        flags = os.environ.get("XLA_FLAGS", "")
        extra = f"--xla_cpu_multi_thread_eigen={'false' if n == '1' else 'true'} intra_op_parallelism_threads={n}"
        os.environ["XLA_FLAGS"] = (flags + " " + extra).strip()


if __name__ == "__main__":
    _early_threads()

import numpy as np  # noqa: E402

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/run.py` from anywhere
    sys.path.insert(0, str(_ROOT))

from benchmarks import registry  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    WORKLOADS,
    Workload,
    eval_loss_f64,
    flops_per_sample,
    get_workload,
    init_params,
    make_data,
)

RTOL = 1e-3


# ---------------------------------------------------------------------------
# machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "?")
    except Exception:
        return "not installed"


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        try:  # load SciPy's BLAS too (Numba's np.dot calls it) so that it is listed
            import scipy.linalg.cython_blas  # noqa: F401
        except Exception:
            pass

        parts = []
        for i in threadpool_info():
            if i.get("user_api") == "blas":
                parts.append(f"{i.get('internal_api')} {i.get('version')} "
                             f"({i.get('architecture')}, {i.get('num_threads')} thr, "
                             f"{Path(i.get('filepath', '')).name})")
        return "; ".join(parts) or "?"
    except Exception:
        return "? (threadpoolctl not installed)"


def machine_info() -> dict[str, str]:
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "?"
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores (os.cpu_count)": str(os.cpu_count()),
        "load average at start": load,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "scipy": _version("scipy"),
        "torch": _version("torch"),
        "jax": _version("jax"),
        "BLAS (threadpoolctl)": blas_info(),
    }


def gemm_peak(n: int = 1024, iters: int = 10) -> dict[str, float]:
    """Best-of float32 GEMM GFLOP/s for n x n matrices: np.dot (NumPy's BLAS), Numba's
    np.dot in an njit loop (SciPy's BLAS), torch.mm if importable."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), np.float32)
    flop = 2.0 * n**3
    out: dict[str, float] = {}

    def best(fn) -> float:
        fn()
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return flop / min(ts) / 1e9

    out["np.dot"] = best(lambda: np.dot(A, B, out=C))
    try:  # Numba's np.dot inside njit (SciPy's BLAS): what numba-dot and generated code use
        from benchmarks.ref_numba_dot import gemm_loop

        gemm_loop(A, B, C, 1)
        out["numba np.dot"] = best(lambda: gemm_loop(A, B, C, 1))
    except Exception:
        pass
    try:
        import torch

        tA, tB = torch.from_numpy(A), torch.from_numpy(B)
        tC = torch.empty((n, n))
        out["torch.mm"] = best(lambda: torch.mm(tA, tB, out=tC))
    except Exception:
        pass
    return out


# ---------------------------------------------------------------------------
# benchmarking


@dataclass
class Result:
    impl: str
    first_s: float = math.nan
    times: list[float] = field(default_factory=list)
    loss: float = math.nan  # reported by the implementation (last step)
    eval_loss: float = math.nan  # full data, float64, from the returned params
    params: dict | None = None
    error: str = ""
    rel_loss: float = math.nan
    rel_eval: float = math.nan
    param_diff: float = math.nan
    ok: bool = True
    warn: bool = False  # last-step loss differs by more than RTOL (full-data loss agrees)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan


def _as_numpy(params) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in params.items()}


def _finite(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x


def _rel(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return abs(a - b) / max(abs(b), 1e-12)


def _quiesce(pause: float) -> None:
    """Collect garbage, then idle so that the previous implementation's spinning
    worker threads (OpenBLAS pools of NumPy and of SciPy/Numba, torch's OpenMP,
    XLA's pool) go to sleep before the next timed call.  Without this, two
    OpenBLAS pools busy-waiting on 2 cores made small-GEMM runs 3-10x slower."""
    gc.collect()
    if pause > 0:
        time.sleep(pause)


def bench_workload(w: Workload, impls: list[registry.Impl], repeats: int, log,
                   pause: float = 0.0) -> dict[str, Result]:
    data = make_data(w)
    prepared: dict[str, dict] = {}
    results = {i.name: Result(i.name) for i in impls}
    live = []
    # warm-up / compile (also yields the parameters used for the checks)
    for impl in impls:
        r = results[impl.name]
        try:
            prepared[impl.name] = impl.prepare(w, data) if impl.prepare else data
            p0 = init_params(w)
            _quiesce(pause)
            t = time.perf_counter()
            params, loss = impl.train(w, prepared[impl.name], p0)
            r.first_s = time.perf_counter() - t
            r.params = _as_numpy(params)
            r.loss = _finite(loss)
            r.eval_loss = eval_loss_f64(w, r.params, data)
            live.append(impl)
            log(f"  {impl.name:<12} first call {r.first_s:8.3f} s   loss {r.loss:.6g}  full-data {r.eval_loss:.6g}")
        except Exception as exc:  # keep benchmarking the others
            r.error = f"{type(exc).__name__}: {exc}"
            r.ok = False
            log(f"  {impl.name:<12} ERROR {r.error}")
    # interleaved timed rounds
    for rep in range(repeats):
        line = []
        for impl in live:
            r = results[impl.name]
            p0 = init_params(w)
            _quiesce(pause)
            t = time.perf_counter()
            params, loss = impl.train(w, prepared[impl.name], p0)
            dt = time.perf_counter() - t
            r.times.append(dt)
            line.append(f"{impl.name} {dt:.3f}")
            if rep == repeats - 1:  # keep the last run's result (should equal the first)
                r.params = _as_numpy(params)
                r.loss = _finite(loss)
                r.eval_loss = eval_loss_f64(w, r.params, data)
        log(f"  round {rep + 1}/{repeats}: " + ", ".join(line))
    return results


def check(w: Workload, results: dict[str, Result], impls: dict[str, registry.Impl]) -> str:
    """Compare losses/params with the reference; returns the reference name."""
    ref_name = registry.BASELINE if results.get(registry.BASELINE) and not results[registry.BASELINE].error \
        else next((n for n, r in results.items() if not r.error), None)
    if ref_name is None:
        return ""
    ref = results[ref_name]
    for name, r in results.items():
        if r.error:
            continue
        r.rel_eval = _rel(r.eval_loss, ref.eval_loss)
        r.rel_loss = _rel(r.loss, ref.loss) if impls[name].loss_is_last_batch else math.nan
        diffs = []
        for k, v in ref.params.items():
            scale = max(float(np.max(np.abs(v))), 1e-12)
            diffs.append(float(np.max(np.abs(np.asarray(r.params[k], np.float64) - v))) / scale)
        r.param_diff = max(diffs)
        # pass/fail on the full-data loss of the final parameters (robust); the
        # last-step minibatch loss is far more sensitive (see README "Agreement")
        r.ok = r.rel_eval <= w.loss_rtol  # False for nan too
        r.warn = r.ok and impls[name].loss_is_last_batch and not (r.rel_loss <= w.loss_rtol)
    return ref_name


# ---------------------------------------------------------------------------
# report


def _fmt_t(t: float) -> str:
    if math.isnan(t):
        return "—"
    if t >= 10:
        return f"{t:.1f}"
    if t >= 0.1:
        return f"{t:.3f}"
    return f"{t * 1e3:.2f} ms"


def _fmt_t_s(t: float) -> str:
    return "—" if math.isnan(t) else f"{t:.4f}" if t < 1 else f"{t:.3f}"


def workload_table(w: Workload, results: dict[str, Result], ref_name: str, peak: float) -> list[str]:
    total_flop = flops_per_sample(w) * w.samples_processed
    show_gflops = w.loss == "ce"
    base = results.get(registry.BASELINE)
    base_med = base.median if base and not base.error else math.nan
    lines = [
        f"### {w.name}: {w.description}",
        "",
        f"N={w.n_samples}, d={w.n_in}, h={w.n_hidden or '-'}, k={w.n_out}, {w.optimizer} lr={w.lr}, "
        f"batch={w.batch}, steps={w.steps} ({w.epochs:.3g} epochs), loss check rtol {w.loss_rtol:g}"
        + (f", {flops_per_sample(w)} FLOP/sample, {total_flop / 1e9:.3f} GFLOP per run" if show_gflops else ""),
        "",
        "| implementation | first call (s) | median (s) | min–max (s) | × numba-dot | "
        + ("GFLOP/s | % of GEMM peak | " if show_gflops else "")
        + "last-step loss | rel. diff | full-data loss (f64) | rel. diff | max param diff | check |",
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if show_gflops else "") + "---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        if r.error:
            lines.append(f"| {name} | — | — | — | — |" + (" — | — |" if show_gflops else "")
                         + f" — | — | — | — | — | ERROR: {r.error[:80]} |")
            continue
        med = r.median
        ratio = med / base_med if base_med == base_med and med == med else math.nan
        mm = f"{_fmt_t_s(min(r.times))}–{_fmt_t_s(max(r.times))}" if r.times else "—"
        cells = [name, _fmt_t_s(r.first_s), _fmt_t_s(med), mm, "—" if math.isnan(ratio) else f"{ratio:.2f}"]
        if show_gflops:
            gf = total_flop / med / 1e9 if med == med else math.nan
            cells += [f"{gf:.2f}", f"{100 * gf / peak:.1f}%" if peak else "—"]
        mark = "ref" if name == ref_name else ("**FAIL**" if not r.ok else "ok, warn" if r.warn else "ok")
        cells += [
            "—" if math.isnan(r.loss) else f"{r.loss:.6g}",
            "—" if math.isnan(r.rel_loss) else f"{r.rel_loss:.1e}",
            f"{r.eval_loss:.6g}",
            "—" if math.isnan(r.rel_eval) else f"{r.rel_eval:.1e}",
            "—" if math.isnan(r.param_diff) else f"{r.param_diff:.1e}",
            mark,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def summary_table(all_results: dict[str, dict[str, Result]], impl_names: list[str]) -> list[str]:
    lines = ["| workload | " + " | ".join(impl_names) + " |", "|---|" + "---:|" * len(impl_names)]
    for wname, results in all_results.items():
        base = results.get(registry.BASELINE)
        bm = base.median if base and not base.error else math.nan
        cells = []
        for n in impl_names:
            r = results.get(n)
            if r is None:
                cells.append("n/a")
            elif r.error:
                cells.append("ERROR")
            else:
                ratio = r.median / bm if bm == bm else math.nan
                tag = "" if r.ok else " **FAIL**"
                tag += " (warn)" if r.warn else ""
                cells.append(f"{_fmt_t(r.median)} ({ratio:.2f}×){tag}" if ratio == ratio else f"{_fmt_t(r.median)}{tag}")
        lines.append(f"| {wname} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


# ---------------------------------------------------------------------------
# main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, default all")
    ap.add_argument("--impls", default="", help="comma-separated implementation names (default: all registered)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per workload (default 5, --quick 2)")
    ap.add_argument("--out", default=None,
                    help="Markdown output file (default benchmarks/RESULTS.md; none with --quick; '-' = none)")
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer steps/samples and repeats")
    ap.add_argument("--plugin", action="append", default=[],
                    help="module to import after the defaults are registered (it calls registry.register)")
    ap.add_argument("--gemm-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every library (BLAS pools, OpenMP, torch, XLA); default: "
                         "library defaults (= all cores; torch.set_num_threads(os.cpu_count()))")
    ap.add_argument("--pause", type=float, default=0.3,
                    help="idle seconds before every timed call so other libraries' spinning "
                         "BLAS/OpenMP threads go to sleep (default 0.3)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    out = args.out
    if out is None:
        out = "-" if args.quick else str(_ROOT / "benchmarks" / "RESULTS.md")

    registry.register_defaults()
    if args.threads:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except Exception:
            pass
    for mod in args.plugin:
        importlib.import_module(mod)
    wanted = [s.strip() for s in args.impls.split(",") if s.strip()]
    impl_list = [i for i in registry.REGISTRY.values() if not wanted or i.name in wanted]

    def log(msg: str) -> None:
        print(msg, flush=True)

    info = machine_info()
    for k, v in info.items():
        log(f"{k}: {v}")
    for i in impl_list:
        if not i.available:
            log(f"SKIP {i.name}: {i.reason}")
    t_start = time.perf_counter()
    peak = gemm_peak(args.gemm_size)
    log("float32 GEMM peak (GFLOP/s, %d^3): " % args.gemm_size
        + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()))

    all_results: dict[str, dict[str, Result]] = {}
    sections: list[str] = []
    any_fail = False
    for wname in [s.strip() for s in args.workloads.split(",") if s.strip()]:
        w = get_workload(wname, quick=args.quick)
        impls = [i for i in impl_list if i.available and i.supports(w)]
        log(f"\n== {w.name}: {w.description}  (steps={w.steps}, N={w.n_samples}) ==")
        results = bench_workload(w, impls, repeats, log, pause=args.pause)
        ref_name = check(w, results, {i.name: i for i in impls})
        for name, r in results.items():
            if r.warn:
                log(f"  warn {w.name} {name}: last-step loss {r.loss:.6g} vs {ref_name} "
                    f"{results[ref_name].loss:.6g} (rel {r.rel_loss:.1e}); full-data loss agrees "
                    f"(rel {r.rel_eval:.1e})")
            if not r.ok:
                any_fail = True
                log(f"  FAIL {w.name} {name}: " + (r.error or
                    f"loss {r.loss:.6g} / full-data {r.eval_loss:.6g} vs {ref_name} "
                    f"{results[ref_name].loss:.6g} / {results[ref_name].eval_loss:.6g} "
                    f"(rel {r.rel_loss:.1e} / {r.rel_eval:.1e}, tol {w.loss_rtol:g})"))
        all_results[w.name] = results
        sections += workload_table(w, results, ref_name, peak.get("np.dot", 0.0))
        log("")
        log("\n".join(sections[-(len(results) + 7):]))
    elapsed = time.perf_counter() - t_start
    try:
        info["load average at end"] = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        pass
    info["threads"] = str(args.threads) if args.threads else f"library defaults ({os.cpu_count()} cores)"

    impl_names = [i.name for i in impl_list if i.available]
    md = [
        "# symgrad benchmark results" + (" (QUICK smoke run: shortened workloads)" if args.quick else ""),
        "",
        f"Command: `python benchmarks/run.py {' '.join(sys.argv[1:]) if argv is None else ' '.join(argv)}`  ",
        f"{repeats} interleaved timed rounds per workload after one warm-up/compile call, "
        f"{args.pause:g} s idle before every call; "
        f"times are wall-clock seconds for the whole training run; ratio = median / numba-dot median; "
        f"loss check: full-data loss within {RTOL:g} relative of the reference (per-workload tolerance in each section; W4 5e-3, see README); total harness time {elapsed:.0f} s.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "| float32 GEMM peak (%d³, best of 10) | " % args.gemm_size
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()) + " |",
        "",
    ]
    skipped = [i for i in impl_list if not i.available]
    if skipped:
        md += ["Skipped: " + "; ".join(f"{i.name} ({i.reason})" for i in skipped), ""]
    md += ["## Summary (median seconds, ratio to numba-dot)", ""]
    md += summary_table(all_results, impl_names)
    md += ["## Per workload", ""] + sections
    md += ["Overall: " + ("**FAIL** (see the check column)" if any_fail else
                          "all implementations agree (full-data loss within the tolerance)"), "",
           "check: FAIL = full-data loss of the final parameters differs from the reference by more "
           "than the tolerance; warn = only the last-step (minibatch) loss does (see README, "
           "\"Agreement\").", ""]
    text = "\n".join(md)
    log("\n" + "\n".join(summary_table(all_results, impl_names)))
    log(f"total harness time {elapsed:.1f} s")
    if out != "-":
        Path(out).write_text(text)
        log(f"wrote {out}")
    log("RESULT: FAIL" if any_fail else "RESULT: all implementations agree")
    return 1 if any_fail else 0


if __name__ == "__main__":
    sys.exit(main())
