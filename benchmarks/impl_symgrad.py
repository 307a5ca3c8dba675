"""symgrad's generated training modules on the benchmark workloads W1-W6.

Each workload is written as a symgrad spec (per sample, as a user would write it), derived,
generated, verified against finite differences and imported -- all in ``prepare``, outside the
timing. ``train`` is the generated module's ``fit`` (float32, the whole run in compiled code),
with minibatches visited in row order as the harness requires (``shuffle=False``).

Registered by ``registry.register_defaults`` as "symgrad" (``loss_is_last_batch=False``: the
generated fit returns epoch-mean losses, so the harness checks the full-data loss only).
A run that is not a whole number of epochs (W3) is laid out as one pass of its minibatches by
``workloads.steps_as_one_pass`` in ``prepare`` (outside the timing).

Generated modules go to ``$SYMGRAD_BENCH_DIR`` (default: ``<tmp>/symgrad-bench``), so Numba's
cache next to them survives between runs (the harness reports the first call separately).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

try:
    from .workloads import Workload, fit_plan, get_workload, steps_as_one_pass
except ImportError:  # pragma: no cover
    from workloads import Workload, fit_plan, get_workload, steps_as_one_pass

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


@functools.cache
def module_for(w: Workload):
    """The generated, verified module of a workload (generated once per process, so a timed
    ``train`` call does not build the spec again)."""
    return codegen.load_module(codegen.generate(spec_for(w), OUT, verify=True))


def prepare(workload, data):
    """Generate the module; lay the data out as one pass of ``steps`` minibatches if needed."""
    w = get_workload(workload)
    module_for(w)
    return steps_as_one_pass(w, data)


def train(workload, data, params):
    w = get_workload(workload)
    module = module_for(w)
    _, epochs = fit_plan(w)
    optimizer = "sgd" if w.optimizer == "gd" else w.optimizer
    hyper = {"beta1": w.adam_beta1, "beta2": w.adam_beta2, "eps": w.adam_eps} \
        if w.optimizer == "adam" else {}
    # the harness hands over fresh writable arrays that may be updated in place, as the
    # hand-written references do: inplace=True trains them without a copy
    fitted, history, _ = module.fit(params, data["X"], data["Y"], optimizer=optimizer, lr=w.lr,
                                    epochs=epochs, batch_size=w.batch, shuffle=False,
                                    inplace=True, **hyper)
    return fitted._asdict(), float(history[-1]) if len(history) else math.nan


def version() -> str:
    return "generated"
