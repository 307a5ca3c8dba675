"""Peak memory of one training run, per implementation, each in a fresh process.

    python benchmarks/memprobe.py W4 numba-dot [--quick] [--plugin mod] [--threads N]

prints one line ``MEMPROBE {json}``.  ``run.py`` calls :func:`measure` for every
implementation of every workload (``--no-memory`` skips it).

What is measured (peak RSS on Linux only; elsewhere it is ``None`` with the reason):

1. a fresh interpreter imports the harness, registers the implementations, builds the
   workload's data, calls ``prepare`` and runs the training once (compile / Numba cache
   load / XLA compile / first-call allocations: the warm-up the timed rounds also have);
2. **peak RSS growth during the training call**, median of ``rss_repeats`` (3) calls on
   fresh initial parameters: the kernel's peak-RSS counter is reset
   (``echo 5 > /proc/self/clear_refs`` sets ``VmHWM`` back to ``VmRSS``), ``VmRSS`` is
   read, the call is made, growth = ``VmHWM`` after - ``VmRSS`` before.  It counts every
   page the call touched beyond what the process already held, from every allocator
   (NumPy, Numba NRT, torch, XLA).  So that memory freed by the warm-up and kept by malloc
   for reuse does not hide the call's allocations, the process runs with glibc's
   ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=0`` (every block of 64 KiB
   or more is its own mapping, unmapped on free; the heap top is trimmed).  Resolution
   ~1 MiB: pages, malloc's heap steps for smaller blocks, Python's 256 KiB arenas, the
   kernel's approximate per-CPU RSS counters;
3. **traced peak**: ``tracemalloc``'s peak during one more call minus what it traced
   before.  Exact for NumPy arrays, Python objects and Numba NRT arrays (Numba's runtime
   allocates through ``PyMem_RawMalloc``: ``numba/core/runtime/nrt.py`` calls
   ``memsys_use_cpython_allocator()``), blind to torch's and XLA's allocators
   (``Impl.traced`` says whether an implementation's figure is complete);
4. for Numba implementations (``Impl.nrt``) the process also has ``NUMBA_NRT_STATS=1`` and
   reports the number of NRT allocations (``rtsys.get_allocation_stats().alloc``) made by
   the first measured call and by a run of twice as many steps (same data, fresh
   parameters): equal counts = nothing allocated per step.

Not counted: ``prepare`` (outside the call, as for the timings: e.g. torch's and JAX's copies
of the data, symgrad's W3 layout of 1000 minibatches as one pass), the data, the interpreter
and libraries (the process peak before the measured call is reported separately).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
PREFIX = "MEMPROBE "

# environment of the probe process (see the module docstring, points 3 and 4)
PROBE_ENV = {
    "NUMBA_NRT_STATS": "1",
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "MALLOC_TOP_PAD_": "0",
}
# below this (KiB) a difference in peak RSS growth is within the measurement's resolution
RESOLUTION_KIB = 1024


def _status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in KiB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1)) for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    """Reset VmHWM to VmRSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _nrt_allocs() -> int | None:
    from numba.core.runtime import rtsys

    stats = rtsys.get_allocation_stats()
    return int(stats.alloc)


def probe(workload: str, impl_name: str, quick: bool = False, plugins=(), threads=None,
          rss_repeats: int = 3) -> dict:
    """Run in the probe process: the measurements of the module docstring."""
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    from benchmarks import registry
    from benchmarks.workloads import get_workload, init_params, make_data

    registry.register_defaults()
    if threads:
        try:
            import torch

            torch.set_num_threads(threads)
        except Exception:
            pass
    for mod in plugins:
        importlib.import_module(mod)
    impl = registry.REGISTRY[impl_name]
    if not impl.available:
        raise RuntimeError(f"{impl_name} unavailable: {impl.reason}")
    w = get_workload(workload, quick=quick)
    data = make_data(w)
    prepared = impl.prepare(w, data) if impl.prepare else data
    impl.train(w, prepared, init_params(w))  # warm-up
    out: dict = {"workload": w.name, "impl": impl_name, "steps": w.steps,
                 "process_peak_kib": _status()["VmHWM"]}
    nrt_on = impl.nrt and os.environ.get("NUMBA_NRT_STATS") == "1"

    # 1. peak RSS growth (every allocator), median of rss_repeats calls
    growths = []
    for i in range(rss_repeats):
        params = init_params(w)
        gc.collect()
        if not _reset_peak():
            out["why"] = "cannot reset the peak-RSS counter (/proc/self/clear_refs)"
            break
        n0 = _nrt_allocs() if nrt_on and i == 0 else None
        rss0 = _status()["VmRSS"]
        res = impl.train(w, prepared, params)
        growths.append(_status()["VmHWM"] - rss0)
        if n0 is not None:
            out["nrt_allocs"] = _nrt_allocs() - n0
        del res, params
    out["rss_growth_kib"] = sorted(growths)[len(growths) // 2] if growths else None
    out["rss_growths_kib"] = growths

    # 2. traced peak (NumPy, Numba NRT and Python objects: exact, but blind to torch/XLA)
    params = init_params(w)
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    c0, _ = tracemalloc.get_traced_memory()
    res = impl.train(w, prepared, params)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["traced_peak_bytes"] = peak - c0
    del res, params

    # 3. NRT allocations of a run twice as long
    if nrt_on:
        gc.collect()
        w2 = dataclasses.replace(w, steps=2 * w.steps)
        prepared2 = impl.prepare(w2, data) if impl.prepare else data
        params2 = init_params(w2)
        n0 = _nrt_allocs()
        impl.train(w2, prepared2, params2)
        out["nrt_allocs_2x"] = _nrt_allocs() - n0
        out["steps_2x"] = w2.steps
    return out


def measure(workload: str, impl_name: str, *, quick: bool = False, plugins=(), threads=None,
            timeout: float = 900) -> dict:
    """Run :func:`probe` in a fresh interpreter with :data:`PROBE_ENV`; its result, or
    ``{"error": ...}``."""
    if not Path("/proc/self/status").exists():
        return {"error": "no /proc (peak RSS is measured on Linux only)"}
    cmd = [sys.executable, str(Path(__file__).resolve()), workload, impl_name]
    if quick:
        cmd.append("--quick")
    for p in plugins:
        cmd += ["--plugin", p]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, **PROBE_ENV}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=str(_ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"error": f"probe exited {proc.returncode}: {tail[:200]}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("impl")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plugin", action="append", default=[])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads; the BLAS/OpenMP/XLA thread variables come from "
                         "the environment (run.py --threads sets them)")
    args = ap.parse_args(argv)
    if all(os.environ.get(k) == v for k, v in PROBE_ENV.items()):
        res = probe(args.workload, args.impl, quick=args.quick, plugins=args.plugin,
                    threads=args.threads)
    else:  # started by hand: run the probe in a process with PROBE_ENV
        res = measure(args.workload, args.impl, quick=args.quick, plugins=args.plugin,
                      threads=args.threads)
    print(PREFIX + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
