"""Benchmark harness: every registered implementation on every workload.

    python benchmarks/run.py [--workloads W1,W2] [--repeats 5] [--out benchmarks/RESULTS.md]
                             [--quick] [--impls numba-dot,torch] [--plugin my.module]
                             [--no-memory] [--threads 1]

Per workload: each available implementation is called once to compile/warm up
(its first-call time is reported separately), then ``--repeats`` interleaved
timed rounds, each in its own order (rows of a Williams Latin square).  Reported:
median and min-max wall time, ratios to the Numba np.dot reference (and to the
explicit-loop one on W1/W2), GFLOP/s (W3-W6) next to a float32 GEMM peak measured
in the same run, a correctness check
(every implementation's loss must match the reference within 1e-3 relative:
``FAIL`` otherwise, exit status 1), the peak memory of one training run per
implementation, each in a fresh process (``memprobe.py``; ``--no-memory`` skips
it), and the issue's performance targets for symgrad, met or not.
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
        # XLA (jax 0.10) ignores those flags and runs a pool on every core: under --threads 1
        # its W6 reached 118 GFLOP/s, above the one-core GEMM peak of 99. Pinning the process
        # (and the memory probes it starts) to N cores holds every library to N.
        if hasattr(os, "sched_setaffinity"):
            allowed = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, allowed[:max(1, int(n))])


if __name__ == "__main__":
    _early_threads()

import numpy as np  # noqa: E402

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/run.py` from anywhere
    sys.path.insert(0, str(_ROOT))

from benchmarks import memprobe, registry  # noqa: E402
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
    mem: dict | None = None  # memprobe.measure()'s result

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


def round_order(items: list, rep: int) -> list:
    """Round ``rep``'s order of ``items``: row ``rep`` of a Williams Latin square (k, k+1, k−1,
    k+2, k−2, … mod n for k = rep mod n), in which each item follows a different one from row
    to row; with an even count, each ordered pair is adjacent exactly once in n rows."""
    n = len(items)
    return [items[(rep + (j + 1) // 2 * (1 if j % 2 else -1)) % n] for j in range(n)]


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
    # interleaved timed rounds, each in its own order: no implementation always runs right
    # after the same other one
    for rep in range(repeats):
        line = []
        for impl in round_order(live, rep):
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


def _median_of(results: dict[str, Result], name: str) -> float:
    r = results.get(name)
    return r.median if r is not None and not r.error else math.nan


def peak_of(peak: dict[str, float]) -> tuple[str, float]:
    """The highest of the GEMM figures measured: the peak the GFLOP/s are compared with."""
    if not peak:
        return "", 0.0
    name = max(peak, key=peak.get)
    return name, peak[name]


def workload_table(w: Workload, results: dict[str, Result], ref_name: str, peak: float) -> list[str]:
    total_flop = flops_per_sample(w) * w.samples_processed
    show_gflops = w.loss == "ce"
    base_med = _median_of(results, registry.BASELINE)
    loops_med = _median_of(results, registry.LOOPS)
    show_loops = loops_med == loops_med
    lines = [
        f"### {w.name}: {w.description}",
        "",
        f"N={w.n_samples}, d={w.n_in}, h={w.n_hidden or '-'}, k={w.n_out}, {w.optimizer} lr={w.lr}, "
        f"batch={w.batch}, steps={w.steps} ({w.epochs:.3g} epochs), loss check rtol {w.loss_rtol:g}"
        + (f", {flops_per_sample(w)} FLOP/sample, {total_flop / 1e9:.3f} GFLOP per run" if show_gflops else ""),
        "",
        "| implementation | first call (s) | median (s) | min–max (s) | × numba-dot | "
        + ("× numba-loops | " if show_loops else "")
        + ("GFLOP/s | % of GEMM peak | " if show_gflops else "")
        + "last-step loss | rel. diff | full-data loss (f64) | rel. diff | max param diff | check |",
        "|---|---:|---:|---:|---:|" + ("---:|" if show_loops else "") + ("---:|---:|" if show_gflops else "")
        + "---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        if r.error:
            lines.append(f"| {name} | — | — | — | — |" + (" — |" if show_loops else "")
                         + (" — | — |" if show_gflops else "")
                         + f" — | — | — | — | — | ERROR: {r.error[:80]} |")
            continue
        med = r.median
        cells = [name, _fmt_t_s(r.first_s), _fmt_t_s(med),
                 f"{_fmt_t_s(min(r.times))}–{_fmt_t_s(max(r.times))}" if r.times else "—",
                 _fmt_ratio(med / base_med)]
        if show_loops:
            cells.append(_fmt_ratio(med / loops_med))
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


def _fmt_ratio(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2f}"


def summary_table(all_results: dict[str, dict[str, Result]], impl_names: list[str],
                  against: str = registry.BASELINE) -> list[str]:
    """Median and ratio to ``against`` per workload (rows without ``against`` are left out
    unless it is the baseline)."""
    lines = ["| workload | " + " | ".join(impl_names) + " |", "|---|" + "---:|" * len(impl_names)]
    for wname, results in all_results.items():
        bm = _median_of(results, against)
        if bm != bm and against != registry.BASELINE:
            continue
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
# memory


def _kib(x) -> str:
    if x is None:
        return "—"
    return f"{x / 1024:.1f} MiB" if x >= 1024 else f"{x:.0f} KiB"


def _bytes(x) -> str:
    return "—" if x is None else _kib(x / 1024)


def traced_peak(r: Result | None, impl: registry.Impl | None) -> float | None:
    """The exact traced peak of a training call, when tracemalloc sees all of it."""
    if r is None or not r.mem or "error" in r.mem or impl is None or not impl.traced:
        return None
    return r.mem.get("traced_peak_bytes")


def memory_table(results: dict[str, Result], impls: dict[str, registry.Impl]) -> list[str]:
    base = results.get(registry.BASELINE)
    base_tr = traced_peak(base, impls.get(registry.BASELINE))
    base_rss = base.mem.get("rss_growth_kib") if base and base.mem and "error" not in base.mem else None
    lines = [
        "Peak memory of one training call (fresh process per implementation, after a warm-up "
        "call; see README \"Memory\"):",
        "",
        "| implementation | traced peak (NumPy + NRT + Python) | × numba-dot | peak RSS growth "
        "(median of 3) | × numba-dot | process peak RSS before the call | NRT allocations: "
        "run / run of 2× steps |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        m = r.mem
        if not m:
            continue
        if "error" in m:
            lines.append(f"| {name} | — | — | — | — | — | ERROR: {m['error'][:80]} |")
            continue
        tr = traced_peak(r, impls.get(name))
        tr_cell = _bytes(tr) if tr is not None else \
            f"n/a ({_bytes(m.get('traced_peak_bytes'))} seen; its allocator is not traced)"
        rss = m.get("rss_growth_kib")
        nrt = "—"
        if m.get("nrt_allocs") is not None and m.get("nrt_allocs_2x") is not None:
            a, b = m["nrt_allocs"], m["nrt_allocs_2x"]
            nrt = f"{a} ({m['steps']} steps) / {b} ({m['steps_2x']} steps)" + \
                ("" if a == b else f": {(b - a) / (m['steps_2x'] - m['steps']):.1f} per step")
        cells = [name, tr_cell,
                 _fmt_ratio(tr / base_tr) if tr is not None and base_tr else "—",
                 _kib(rss) + (f" ({m['why']})" if m.get("why") else ""),
                 _fmt_ratio(rss / base_rss) if rss is not None and base_rss else "—",
                 _kib(m.get("process_peak_kib")), nrt]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


# ---------------------------------------------------------------------------
# targets (issue "Performance"): symgrad against the references, from this run's medians

SPEED_TARGETS = [  # (workloads, other implementation, required speed-up other/symgrad)
    (("W1", "W2"), registry.LOOPS, 1.0),
    (("W1", "W2"), "jax", 4.0),
    (("W1", "W2"), "torch", 100.0),
    (("W3",), "jax", 2.0),
    (("W3",), "torch", 5.0),
    (("W4", "W5", "W6"), "jax", 1.0),
    (("W4", "W5", "W6"), "torch", 1.5),
]
PEAK_TARGETS = {"W6": 0.65}  # fraction of the float32 GEMM peak measured in the same run
MEMORY_TARGET = 1.2  # symgrad's traced peak / numba-dot's, every workload


@dataclass
class TargetRow:
    workload: str
    target: str
    measured: str
    required: str
    status: str  # "met" | "NOT met" | "not measured"
    note: str = ""


def _speed_row(wname, results, other, required) -> TargetRow:
    subj = registry.SUBJECT
    what = (f"no slower than {other}" if required == 1.0 and other == registry.LOOPS
            else f"at least as fast as {other}" if required == 1.0 else f"≥ {required:g}× faster than {other}")
    row = TargetRow(wname, what, "—", f"≥ {required:.2f}×", "not measured")
    s, o = results.get(subj), results.get(other)
    if s is None or s.error:
        row.note = f"{subj} " + ("did not run" if s is None else "failed")
        return row
    if o is None or o.error:
        row.note = f"{other} " + ("did not run (not installed or not selected)" if o is None else "failed")
        return row
    speedup = o.median / s.median
    row.measured = f"{speedup:.2f}× ({_fmt_t(o.median)} vs {_fmt_t(s.median)})"
    if not o.ok:
        row.note = f"{other} failed the loss check"
        return row
    row.status = "met" if speedup >= required and s.ok else "NOT met"
    if not s.ok:
        row.note = f"{subj} failed the loss check"
    return row


def target_rows(workloads: dict[str, Workload], all_results: dict[str, dict[str, Result]],
                impls: dict[str, registry.Impl], peak: tuple[str, float], memory: bool) -> list[TargetRow]:
    subj = registry.SUBJECT
    rows: list[TargetRow] = []
    for wname, results in all_results.items():
        for names, other, required in SPEED_TARGETS:
            if wname in names:
                rows.append(_speed_row(wname, results, other, required))
        if wname in PEAK_TARGETS:
            need = PEAK_TARGETS[wname]
            row = TargetRow(wname, "fraction of the float32 GEMM peak", "—", f"≥ {100 * need:.0f}%",
                            "not measured")
            s, w = results.get(subj), workloads[wname]
            if s is None or s.error:
                row.note = f"{subj} did not run"
            elif not peak[1]:
                row.note = "no GEMM peak measured"
            else:
                gf = flops_per_sample(w) * w.samples_processed / s.median / 1e9
                frac = gf / peak[1]
                row.measured = f"{100 * frac:.1f}% ({gf:.1f} of {peak[1]:.1f} GFLOP/s, {peak[0]})"
                row.status = "met" if frac >= need and s.ok else "NOT met"
                row.note = "" if s.ok else f"{subj} failed the loss check"
            rows.append(row)
        s, b = results.get(subj), results.get(registry.BASELINE)
        row = TargetRow(wname, "peak memory of a training call vs numba-dot (traced)", "—",
                        f"≤ {MEMORY_TARGET:.2f}×", "not measured")
        st, bt = traced_peak(s, impls.get(subj)), traced_peak(b, impls.get(registry.BASELINE))
        if not memory:
            row.note = "--no-memory"
        elif st is None or not bt:
            row.note = "no memory figure for " + (subj if st is None else registry.BASELINE)
        else:
            row.measured = f"{st / bt:.2f}× ({_bytes(st)} vs {_bytes(bt)})"
            row.status = "met" if st <= MEMORY_TARGET * bt else "NOT met"
        rows.append(row)
        row = TargetRow(wname, "no allocation per step (Numba NRT allocations)", "—",
                        "same count for 2× steps", "not measured")
        m = s.mem if s is not None else None
        if not memory:
            row.note = "--no-memory"
        elif not m or m.get("nrt_allocs") is None or m.get("nrt_allocs_2x") is None:
            row.note = f"no NRT count for {subj}" + (f": {m['error']}" if m and "error" in m else "")
        else:
            a, b2 = m["nrt_allocs"], m["nrt_allocs_2x"]
            per = (b2 - a) / (m["steps_2x"] - m["steps"])
            row.measured = f"{a} in {m['steps']} steps, {b2} in {m['steps_2x']} ({per:.1f} per step)"
            row.status = "met" if a == b2 else "NOT met"
        rows.append(row)
    return rows


def targets_table(rows: list[TargetRow]) -> list[str]:
    lines = ["| workload | target | measured | required | status |", "|---|---|---:|---:|---|"]
    for r in rows:
        st = {"met": "met", "NOT met": "**NOT met**"}.get(r.status, r.status)
        lines.append(f"| {r.workload} | {r.target} | {r.measured} | {r.required} | {st}"
                     + (f" ({r.note})" if r.note else "") + " |")
    n_met = sum(r.status == "met" for r in rows)
    n_not = sum(r.status == "NOT met" for r in rows)
    lines += ["", f"{n_met} met, {n_not} not met, {len(rows) - n_met - n_not} not measured.", ""]
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
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the peak-memory probes (one fresh process per implementation "
                         "and workload, after the timings; a few minutes in a full run)")
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

    peak_name, peak_val = peak_of(peak)
    impls_by_name = {i.name: i for i in impl_list}
    all_results: dict[str, dict[str, Result]] = {}
    workloads: dict[str, Workload] = {}
    sections: list[str] = []
    any_fail = False
    for wname in [s.strip() for s in args.workloads.split(",") if s.strip()]:
        w = get_workload(wname, quick=args.quick)
        workloads[w.name] = w
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
        if args.memory:
            for name, r in results.items():
                if r.error:
                    continue
                t = time.perf_counter()
                r.mem = memprobe.measure(wname, name, quick=args.quick, plugins=args.plugin,
                                         threads=args.threads)
                m = r.mem
                log(f"  memory {name:<12} " + (f"ERROR {m['error']}" if "error" in m else
                    f"traced peak {_bytes(m.get('traced_peak_bytes'))}, RSS growth "
                    f"{_kib(m.get('rss_growth_kib'))}"
                    + (f", NRT allocations {m['nrt_allocs']} / {m['nrt_allocs_2x']} (2x steps)"
                       if m.get("nrt_allocs_2x") is not None else "")
                    + f"  [{time.perf_counter() - t:.1f} s]"))
        all_results[w.name] = results
        table = workload_table(w, results, ref_name, peak_val)
        if args.memory:
            table += memory_table(results, impls_by_name)
        sections += table
        log("")
        log("\n".join(table))
    elapsed = time.perf_counter() - t_start
    try:
        info["load average at end"] = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        pass
    info["threads"] = str(args.threads) if args.threads else f"library defaults ({os.cpu_count()} cores)"

    impl_names = [i.name for i in impl_list if i.available]
    rows = target_rows(workloads, all_results, impls_by_name, (peak_name, peak_val), args.memory)
    quick_note = ("**QUICK run: shortened workloads (fewer samples/steps), so these are NOT the "
                  "figures the targets are about.**") if args.quick else ""
    md = [
        "# symgrad benchmark results" + (" (QUICK smoke run: shortened workloads)" if args.quick else ""),
        "",
        f"Command: `python benchmarks/run.py {' '.join(sys.argv[1:]) if argv is None else ' '.join(argv)}`  ",
        f"{repeats} interleaved timed rounds per workload (each in its own order) "
        f"after one warm-up/compile call, "
        f"{args.pause:g} s idle before every call; "
        f"times are wall-clock seconds for the whole training run; ratio = median / numba-dot median "
        f"(W1, W2 also / numba-loops median); "
        f"loss check: full-data loss within {RTOL:g} relative of the reference (per-workload tolerance in each section; W4 5e-3, see README); "
        f"GFLOP/s are compared with the highest GEMM figure measured ({peak_name} {peak_val:.1f} GFLOP/s); "
        f"total harness time {elapsed:.0f} s.",
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
    md += ["## Targets", "",
           f"{registry.SUBJECT} (the generated module) against the targets of the issue "
           "\"Performance\", from this run's medians: speed-up = other median / "
           f"{registry.SUBJECT} median; GEMM fraction = {registry.SUBJECT}'s GFLOP/s "
           f"(4·d·h + 6·h·k FLOPs per sample) / {peak_name} peak; memory = traced peak of one "
           "training call (exact: NumPy, Numba NRT and Python allocations; see README \"Memory\"); "
           "allocation = Numba NRT allocations of a run and of a run of twice as many steps.", ""]
    if quick_note:
        md += [quick_note, ""]
    md += targets_table(rows)
    md += ["## Summary (median seconds, ratio to numba-dot)", ""]
    md += summary_table(all_results, impl_names)
    if any(_median_of(r, registry.LOOPS) == _median_of(r, registry.LOOPS) for r in all_results.values()):
        md += ["Ratio to the explicit-loop Numba reference (numba-loops, W1 and W2):", ""]
        md += summary_table(all_results, impl_names, against=registry.LOOPS)
    md += ["## Per workload", ""] + sections
    md += ["Overall: " + ("**FAIL** (see the check column)" if any_fail else
                          "all implementations agree (full-data loss within the tolerance)"), "",
           "check: FAIL = full-data loss of the final parameters differs from the reference by more "
           "than the tolerance; warn = only the last-step (minibatch) loss does (see README, "
           "\"Agreement\").", ""]
    text = "\n".join(md)
    log("\n" + "\n".join(summary_table(all_results, impl_names)))
    log("Targets" + (" (QUICK run: shortened workloads)" if args.quick else "") + ":")
    log("\n".join(targets_table(rows)))
    log(f"total harness time {elapsed:.1f} s")
    if out != "-":
        Path(out).write_text(text)
        log(f"wrote {out}")
    log("RESULT: FAIL" if any_fail else "RESULT: all implementations agree")
    return 1 if any_fail else 0


if __name__ == "__main__":
    sys.exit(main())
