"""Implementation registry: the extension point of the benchmark harness.

An implementation is a callable ``train(workload, data, params) -> (params, final_loss)``:

* ``workload`` -- a :class:`~benchmarks.workloads.Workload` (``--quick`` passes
  shrunken variants that are not in ``WORKLOADS``); ``get_workload(workload)``
  accepts a name or a Workload;
* ``data`` -- ``{"X": float32 (N, d), "Y": float32 (N, k) or int64 (N,)}`` as
  returned by ``make_data`` (read-only!), or whatever the implementation's
  optional ``prepare(workload, data)`` returned (called once per workload,
  *outside* the timing: device transfers, dtype/layout conversions, ...);
* ``params`` -- a fresh dict of writable float32 arrays from ``init_params``
  (the callable may update them in place);
* returns the trained parameters (same names/shapes, anything ``np.asarray``
  accepts) and the loss of the last optimizer step's forward pass (``nan`` or
  ``None`` if the implementation cannot report it: the harness then only
  checks the full-data loss it computes itself from the returned parameters).

Register with :func:`register` (a callable you already have) or
:func:`register_module` (imported lazily; an ImportError or a module-level
``AVAILABLE = False`` marks the implementation as skipped, with the reason).
symgrad itself (``impl_symgrad``: the workloads written as specs, generated in
``prepare``) is registered by :func:`register_defaults`.  Example for another module
exposing ``fit(params, X, Y, optimizer=..., lr=..., epochs=..., batch_size=..., seed=...)``::

    from benchmarks.registry import register, fit_adapter
    import generated.mlp_ce as mod            # produced from a spec
    fit = fit_adapter(mod.fit, shuffle=False) # extra kwargs are passed to fit
    register("my-mlp", fit, prepare=fit.prepare, loss_is_last_batch=False, nrt=True,
             supports=lambda w: w.name in {"W4", "W5", "W6"})

Put such lines in a module and pass it with ``run.py --plugin my_module`` (it is
imported after the defaults are registered), or add them to
:func:`register_defaults`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

try:
    from .workloads import Workload, fit_plan, get_workload, steps_as_one_pass
except ImportError:  # pragma: no cover
    from workloads import Workload, fit_plan, get_workload, steps_as_one_pass

TrainFn = Callable[[Any, dict, dict], tuple]


@dataclass
class Impl:
    name: str
    train: TrainFn | None
    supports: Callable[[Workload], bool] = lambda w: True
    prepare: Callable[[Workload, dict], dict] | None = None
    available: bool = True
    reason: str = ""  # why unavailable
    version: str | None = None
    # False when the returned loss is not "forward loss of the last step"
    # (e.g. an epoch average): then only the full-data loss is compared.
    loss_is_last_batch: bool = True
    note: str = ""
    # True for Numba implementations: the memory probe reports their Numba NRT
    # allocation counts (meaningless for NumPy/torch/JAX, which allocate elsewhere)
    nrt: bool = False
    # True when all its buffers come from NumPy, Numba NRT or Python objects, so that
    # tracemalloc sees every byte (not torch's or XLA's allocators)
    traced: bool = False


REGISTRY: dict[str, Impl] = {}

# the implementation ratios are computed against
BASELINE = "numba-dot"
# the explicit-loop reference (W1, W2): ratios against it are reported too
LOOPS = "numba-loops"
# the implementation the targets (RESULTS.md "Targets") are about
SUBJECT = "symgrad"


def register(name: str, train: TrainFn, *, supports=None, prepare=None, version=None,
             loss_is_last_batch: bool = True, note: str = "", replace: bool = True,
             nrt: bool = False, traced: bool = False) -> Impl:
    """Add (or replace) an implementation; returns its :class:`Impl` record."""
    if name in REGISTRY and not replace:
        raise KeyError(f"implementation {name!r} already registered")
    impl = Impl(name=name, train=train, supports=supports or (lambda w: True), prepare=prepare,
                version=version, loss_is_last_batch=loss_is_last_batch, note=note, nrt=nrt,
                traced=traced)
    REGISTRY[name] = impl
    return impl


def register_module(name: str, module: str, *, attr: str = "train", supports_attr: str = "supports",
                    prepare_attr: str = "prepare", package: str | None = None, note: str = "",
                    loss_is_last_batch: bool = True, nrt: bool = False, traced: bool = False) -> Impl:
    """Register ``module.attr``; the module may define ``AVAILABLE``/``UNAVAILABLE_REASON``,
    ``supports(workload) -> bool``, ``prepare(workload, data)`` and ``version()``."""
    try:
        mod = importlib.import_module(module, package)
    except Exception as exc:  # ImportError, or a broken optional dependency
        impl = Impl(name=name, train=None, available=False, reason=f"import failed: {exc!r}",
                    note=note, nrt=nrt, traced=traced)
        REGISTRY[name] = impl
        return impl
    if not getattr(mod, "AVAILABLE", True):
        impl = Impl(name=name, train=None, available=False,
                    reason=getattr(mod, "UNAVAILABLE_REASON", "unavailable"), note=note, nrt=nrt,
                    traced=traced)
        REGISTRY[name] = impl
        return impl
    supports = getattr(mod, supports_attr, None)
    ver = getattr(mod, "version", None)
    return register(
        name,
        getattr(mod, attr),
        supports=(lambda w, _s=supports: bool(_s(w))) if supports else None,
        prepare=getattr(mod, prepare_attr, None),
        version=ver() if callable(ver) else None,
        loss_is_last_batch=loss_is_last_batch,
        note=note,
        nrt=nrt,
        traced=traced,
    )


def available(workload: Workload) -> list[Impl]:
    return [i for i in REGISTRY.values() if i.available and i.supports(workload)]


def register_defaults() -> None:
    """symgrad's generated modules and the references shipped in benchmarks/."""
    pkg = __package__ or None
    prefix = "." if pkg else ""
    # fit's history is the epoch-mean loss, not the last step's: only the full-data loss is checked
    register_module(SUBJECT, prefix + "impl_symgrad", package=pkg, loss_is_last_batch=False,
                    nrt=True, traced=True,
                    note="symgrad-generated module: spec -> derive -> generate -> fit")
    register_module(BASELINE, prefix + "ref_numba_dot", package=pkg, nrt=True, traced=True,
                    note="hand-written Numba, np.dot (BLAS), one njit call")
    register_module(LOOPS, prefix + "ref_numba_loops", package=pkg, nrt=True, traced=True,
                    note="hand-written Numba, explicit loops, W1/W2 only")
    register_module("numpy", prefix + "ref_numpy", package=pkg, traced=True, note="plain NumPy")
    register_module("torch", prefix + "ref_torch", package=pkg, note="eager PyTorch + torch.optim")
    register_module("jax", prefix + "ref_jax", package=pkg, note="jax.jit of the whole loop (fori_loop)")


# ---------------------------------------------------------------------------
# adapter for symgrad-style ``fit`` functions


class _FitAdapter:
    """Wraps ``fit(params, X, Y, optimizer=..., lr=..., epochs=..., batch_size=..., seed=...)``
    into a registry callable.

    * the optimizer name is the workload's (``"gd"`` is passed as ``gd_name``,
      with ``batch_size=N``);
    * a run of ``steps`` that is not a whole number of epochs (W3: 1000 steps of
      100 over 60,000 rows) is expressed as ONE epoch over the rows in step order
      (the data tiled to ``steps * batch`` rows, done in :meth:`prepare`, outside
      the timing);
    * ``fit`` must visit batches sequentially (no shuffling) for the losses to
      agree with the references: pass e.g. ``shuffle=False`` through ``extra``
      if the generated fit shuffles by default;
    * ``fit`` may return ``params``, ``(params, loss)`` or ``(params, history)``
      (a sequence of losses -> last element), or an object with ``.params`` and
      ``.loss``/``.losses``/``.history``.
    """

    def __init__(self, fit, gd_name: str = "sgd", seed: int = 0, **extra):
        self.fit = fit
        self.gd_name = gd_name
        self.seed = seed
        self.extra = extra

    def prepare(self, workload, data):
        return steps_as_one_pass(get_workload(workload), data)

    def __call__(self, workload, data, params):
        w = get_workload(workload)
        _, epochs = fit_plan(w)
        opt = self.gd_name if w.optimizer == "gd" else w.optimizer
        res = self.fit(params, data["X"], data["Y"], optimizer=opt, lr=w.lr, epochs=epochs,
                       batch_size=w.batch, seed=self.seed, **self.extra)
        return _unpack_fit_result(res, params)


def _last(x):
    if x is None:
        return math.nan
    if np.ndim(x) == 0:
        return float(x)
    x = list(x) if not isinstance(x, np.ndarray) else x.ravel()
    return float(x[-1]) if len(x) else math.nan


def _unpack_fit_result(res, params):
    if isinstance(res, dict):
        return res, math.nan
    if isinstance(res, tuple) and len(res) >= 2 and isinstance(res[0], dict):
        return res[0], _last(res[1])
    for attr in ("params", "parameters"):
        if hasattr(res, attr):
            p = getattr(res, attr)
            for la in ("loss", "final_loss", "losses", "history", "loss_history"):
                if hasattr(res, la):
                    return p, _last(getattr(res, la))
            return p, math.nan
    if res is None:  # trained in place
        return params, math.nan
    raise TypeError(f"cannot interpret fit() result of type {type(res).__name__}")


def fit_adapter(fit, **kwargs) -> _FitAdapter:
    """Registry callable around a symgrad-style ``fit``; use ``adapter.prepare`` as
    the ``prepare`` hook (see :class:`_FitAdapter`)."""
    return _FitAdapter(fit, **kwargs)
