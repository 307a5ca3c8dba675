"""Start-up time: cold (derive + generate + check + first step) and warm (import + first step).

    python benchmarks/startup.py [--repeats 3] [--specs s5_tiny_mlp,w4] [--dtype float64]

Every measurement is a fresh Python process (a child of this script: ``--child``). Per repeat,
a fresh temporary ``NUMBA_CACHE_DIR`` and module folder are made, then

* **cold**: derive the spec, ``symgrad.runs.load_run_module`` (what ``symgrad train`` does:
  generate the module, check its gradients against finite differences, install it, import it),
  then the first training step, all with an empty Numba cache and no generated module;
* **warm**: a new process with the same two folders imports the generated module file directly
  (``importlib``, as ``import <name>`` would: numpy + numba only) and runs the first training
  step: every compiled function comes from Numba's on-disk cache;
* **warm-symgrad**: the same, along ``symgrad train``'s path (import symgrad, derive, find the
  cached module current, import it, first step).

Times are measured inside the child from its first statement (interpreter start-up, ~30 ms,
is not included; the parent's wall time per child is printed as ``wall``). ``cpu`` is the CPU
time of the child's main thread up to the end of the first step: compiling is single-threaded,
so on a shared machine it is the steadier figure (about what ``total`` is on an idle one). The
first training step is ``fit`` for one epoch of one minibatch (``batch_size`` rows, 32 for
full-batch specs) with the spec's optimizer, in ``--dtype`` (float64: ``symgrad train``'s
default).

Specs: every ``examples/*.toml`` and ``w4``, the 784→128 ReLU→10 softmax network of benchmark
workload W4 (``benchmarks/impl_symgrad.spec_for``) trained with Adam on minibatches of 32.
Medians and min–max over the repeats; targets: cold ≤ 5 s, warm ≤ 0.5 s. Exit status 1 when a
median misses its target.
"""

import time

_T0 = time.perf_counter()  # the children time themselves from here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
COLD_TARGET_S = 5.0
WARM_TARGET_S = 0.5


# ============================================================================ children


def _spec(key: str):
    """The spec of a key: an examples/<key>.toml, or 'w4' (the benchmark's MLP)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from symbolic import load_spec, spec_from_dict

    if key != "w4":
        return load_spec(EXAMPLES / f"{key}.toml")
    from benchmarks.impl_symgrad import spec_for
    from benchmarks.workloads import get_workload

    data = spec_for(get_workload("W4")).to_dict()
    data["name"] = "startup_w4"
    data["train"] = {**data.get("train", {}), "optimizer": "adam", "lr": 1e-3, "batch_size": 32}
    return spec_from_dict(data)


def _first_step(module, train: dict, dtype: str) -> None:
    """One epoch of one minibatch of ``fit`` with the spec's optimizer, on random data."""
    import numpy as np

    batch = int(train.get("batch_size") or 0) or 32
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, *module.INPUT_SHAPE)).astype(dtype)
    if module.CLASSES:
        Y = np.arange(batch) % module.CLASSES
    elif module.TASK == "binary":
        Y = (np.arange(batch * max(1, int(np.prod(module.TARGET_SHAPE)))) % 2).reshape(
            (batch, *module.TARGET_SHAPE)).astype(dtype)
    else:
        Y = rng.normal(size=(batch, *module.TARGET_SHAPE)).astype(dtype)
    params = module.init_params(0, dtype=np.dtype(dtype))
    module.fit(params, X, Y, optimizer=train.get("optimizer", "gd"), lr=train.get("lr", 0.01),
               epochs=1, batch_size=batch)


def child_symgrad(key: str, modules: str, dtype: str) -> dict:
    """symgrad train's path: derive → load_run_module → first step. With an empty module folder
    and cache that is the cold start (generate, check, install, import); with both filled by an
    earlier cold run, the warm start of ``symgrad train``."""
    t_start = _T0
    sys.path.insert(0, str(ROOT))
    from symbolic import derive
    from symgrad.runs import load_run_module

    t_import = time.perf_counter()
    spec = _spec(key)
    d = derive(spec)
    t_derive = time.perf_counter()
    module, path = load_run_module(d, modules)
    t_generate = time.perf_counter()
    _first_step(module, spec.to_dict().get("train", {}), dtype)
    t_step = time.perf_counter()
    return {"path": str(path), "import": t_import - t_start, "derive": t_derive - t_import,
            "generate": t_generate - t_derive, "first_step": t_step - t_generate,
            "total": t_step - t_start, "cpu": time.thread_time(), **_compiled(module)}


def child_warm(path: str, train: str, dtype: str) -> dict:
    """Import the generated file (numpy + numba only) → first step."""
    t_start = _T0
    import importlib.util

    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    t_import = time.perf_counter()
    _first_step(module, json.loads(train), dtype)
    t_step = time.perf_counter()
    return {"import": t_import - t_start, "first_step": t_step - t_import,
            "total": t_step - t_start, "cpu": time.thread_time(), **_compiled(module)}


def _compiled(module) -> dict:
    """How many function signatures of the module Numba compiled (not loaded) in this process."""
    misses = 0
    for obj in {id(v): v for v in vars(module).values()}.values():
        stats = getattr(obj, "stats", None)
        if stats is not None and hasattr(stats, "cache_misses"):
            misses += sum(stats.cache_misses.values())
    return {"compiled": misses}


# ============================================================================ the parent


def _run_child(args: list[str], env: dict) -> dict:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, __file__, "--child", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}–{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--specs", default="",
                        help="comma-separated keys: examples/<key>.toml stems and/or w4 "
                             "(default: all examples and w4)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--child", nargs=4, metavar=("MODE", "KEY", "ARG", "DTYPE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        mode, key, arg, dtype = args.child
        if mode == "warm":
            result = child_warm(key, arg, dtype)
        else:  # "cold" or "warm-symgrad": the same path, empty or filled folders
            result = child_symgrad(key, arg, dtype)
        print(json.dumps(result))
        return 0

    keys = [k for k in args.specs.split(",") if k] or \
        [p.stem for p in sorted(EXAMPLES.glob("*.toml"))] + ["w4"]
    import numba
    import numpy

    print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; dtype {args.dtype}, "
          f"{args.repeats} repeats; seconds, median (min–max)")
    phases = {"cold": ["import", "derive", "generate", "first_step", "total", "cpu", "wall"],
              "warm": ["import", "first_step", "total", "cpu", "wall"],
              "warm-symgrad": ["import", "derive", "generate", "first_step", "total", "cpu",
                               "wall"]}
    failed = False
    for key in keys:
        results: dict[str, list[dict]] = {mode: [] for mode in phases}
        train = json.dumps(_spec(key).to_dict().get("train", {}))
        for _ in range(args.repeats):
            scratch = Path(tempfile.mkdtemp(prefix="symgrad-startup-"))
            try:
                env = {**os.environ, "NUMBA_CACHE_DIR": str(scratch / "numba")}
                modules = str(scratch / "modules")
                cold = _run_child(["cold", key, modules, args.dtype], env)
                results["cold"].append(cold)
                results["warm"].append(_run_child(["warm", cold["path"], train, args.dtype], env))
                results["warm-symgrad"].append(
                    _run_child(["warm-symgrad", key, modules, args.dtype], env))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        print(f"\n{key} (load average {os.getloadavg()[0]:.2f})")
        for mode, names in phases.items():
            cells = "  ".join(f"{n} {_fmt([r[n] for r in results[mode]])}" for n in names)
            compiled = sorted({r["compiled"] for r in results[mode] if "compiled" in r})
            note = f"  compiled {compiled}" if compiled and compiled != [0] else ""
            print(f"  {mode:13s} {cells}{note}")
        cold_median = statistics.median(r["total"] for r in results["cold"])
        warm_median = statistics.median(r["total"] for r in results["warm"])
        cold_ok, warm_ok = cold_median <= COLD_TARGET_S, warm_median <= WARM_TARGET_S
        verdict = (f"cold {'ok' if cold_ok else 'OVER'} (≤ {COLD_TARGET_S:g} s), "
                   f"warm {'ok' if warm_ok else 'OVER'} (≤ {WARM_TARGET_S:g} s)")
        failed |= not (cold_ok and warm_ok)
        print(f"  targets: {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
