"""symgrad's generated training modules on the benchmark workloads W1-W6.

Each workload is written as a symgrad spec (per sample, as a user would write it), derived,
generated, verified against finite differences and imported -- all in ``prepare``, outside the
timing. ``train`` is the generated module's ``fit`` (float32, the whole run in compiled code),
with minibatches visited in row order as the harness requires (``shuffle=False``).

Use as a plugin::

    python benchmarks/run.py --plugin benchmarks.impl_symgrad

or register it with the defaults (one line in ``register_defaults``)::

    register_module("symgrad", prefix + "impl_symgrad", package=pkg, loss_is_last_batch=False,
                    note="symgrad-generated module (fit)")

Generated modules go to ``$SYMGRAD_BENCH_DIR`` (default: ``<tmp>/symgrad-bench``), so Numba's
cache next to them survives between runs (the harness reports the first call separately).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

try:
    from .workloads import Workload, get_workload
except ImportError:  # pragma: no cover
    from workloads import Workload, get_workload

try:
    import codegen
    from symbolic import Spec
except ImportError as exc:  # pragma: no cover
    AVAILABLE = False
    UNAVAILABLE_REASON = f"symgrad is not importable: {exc}"
else:
    AVAILABLE = True

OUT = Path(os.environ.get("SYMGRAD_BENCH_DIR", Path(tempfile.gettempdir()) / "symgrad-bench"))


def spec_for(w: Workload) -> Spec:
    """The workload as a symgrad spec: shapes, init and loss of benchmarks/workloads.py."""
    d, h, k = w.n_in, w.n_hidden, w.n_out
    targets = {"y": {"classes": k}} if w.loss == "ce" else {"y": k}
    loss = "softmax_cross_entropy(z, y)" if w.loss == "ce" else "mse(z, y)"
    if h == 0:
        params = {"W": {"shape": [k, d], "init": "zeros" if w.zero_init else "glorot"},
                  "b": {"shape": [k]}}
        model = {"z": "W @ x + b"}
    else:
        params = {"W1": {"shape": [h, d], "init": "he"}, "b1": {"shape": [h]},
                  "W2": {"shape": [k, h], "init": "glorot"}, "b2": {"shape": [k]}}
        model = {"a": "relu(W1 @ x + b1)", "z": "W2 @ a + b2"}
    return Spec.build(name=f"bench_{w.name.lower()}", inputs={"x": d}, targets=targets,
                      params=params, model=model, loss=loss)


_MODULES: dict[str, object] = {}


def module_for(w: Workload):
    """The generated, verified module of a workload (generated once per process)."""
    key = spec_for(w).digest
    if key not in _MODULES:
        path = codegen.generate(spec_for(w), OUT, verify=True)
        _MODULES[key] = codegen.load_module(path)
    return _MODULES[key]


def _epochs(w: Workload) -> tuple[bool, int]:
    whole, rem = divmod(w.steps, w.n_batches)
    return (False, whole) if rem == 0 else (True, 1)


def prepare(workload, data):
    """Generate the module; lay the data out as one pass of ``steps`` minibatches if needed."""
    w = get_workload(workload)
    module_for(w)
    tile, _ = _epochs(w)
    if not tile:
        return data
    if w.n_samples % w.batch:
        raise NotImplementedError("tiling with ragged batches would merge batches")
    rows = np.concatenate([np.arange((s % w.n_batches) * w.batch,
                                     (s % w.n_batches + 1) * w.batch) for s in range(w.steps)])
    return {"X": np.ascontiguousarray(data["X"][rows]), "Y": np.ascontiguousarray(data["Y"][rows])}


def train(workload, data, params):
    w = get_workload(workload)
    module = module_for(w)
    _, epochs = _epochs(w)
    optimizer = "sgd" if w.optimizer == "gd" else w.optimizer
    hyper = {"beta1": w.adam_beta1, "beta2": w.adam_beta2, "eps": w.adam_eps} \
        if w.optimizer == "adam" else {}
    fitted, history, _ = module.fit(params, data["X"], data["Y"], optimizer=optimizer, lr=w.lr,
                                    epochs=epochs, batch_size=w.batch, shuffle=False, **hyper)
    return fitted._asdict(), float(history[-1]) if len(history) else math.nan


def version() -> str:
    return "generated"


if AVAILABLE:  # imported as a run.py --plugin: register beside the defaults
    try:
        from . import registry as _registry
    except ImportError:  # pragma: no cover
        import registry as _registry
    _registry.register("symgrad", train, prepare=prepare, loss_is_last_batch=False,
                       note="symgrad-generated module: spec -> derive -> generate -> fit")
