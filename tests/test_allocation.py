"""No memory allocated per step: a generated module's ``fit`` makes as many Numba NRT
allocations for 4 epochs as for 1 (buffers are allocated once per ``fit`` call).

The counts come from ``numba.core.runtime.rtsys.get_allocation_stats().alloc`` (every
``NRT_Allocate``: arrays created inside compiled code). Numba only keeps these statistics
when ``NUMBA_NRT_STATS=1`` is set before it initialises its runtime, so the fits run in a
subprocess started with that variable; NumPy allocations on the Python side of ``fit`` (the
parameter copies, the moments, the history) are not NRT allocations and are not counted.

Models: a 4 -> 3 ReLU -> 2 softmax classifier and a 3 -> 1 linear regression, float32,
minibatches of 16 over 40 rows (two full minibatches and a last one of 8), optimizers sgd and
adam, rows in order and shuffled. Every configuration is called once first (compilation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import codegen
from symbolic import Spec

ROOT = Path(__file__).resolve().parent.parent

N_ROWS, BATCH = 40, 16
STEPS_PER_EPOCH = -(-N_ROWS // BATCH)
EPOCHS = (1, 4)
OPTIMIZERS = ("sgd", "adam")
SHUFFLE = (False, True)

SPECS = {
    "classifier": Spec.build(
        name="alloc_relu_softmax", inputs={"x": 4}, targets={"y": {"classes": 2}},
        params={"W1": {"shape": [3, 4], "init": "he"}, "b1": {"shape": [3]},
                "W2": {"shape": [2, 3], "init": "glorot"}, "b2": {"shape": [2]}},
        model={"a": "relu(W1 @ x + b1)", "z": "W2 @ a + b2"},
        loss="softmax_cross_entropy(z, y)"),
    "regression": Spec.build(
        name="alloc_linear_mse", inputs={"x": 3}, targets={"y": 1},
        params={"W": {"shape": [1, 3], "init": "glorot"}, "b": {"shape": [1]}},
        model={"z": "W @ x + b"}, loss="mse(z, y)"),
}

# run in the subprocess: argv = module path, JSON list of configurations
CHILD = r"""
import json, sys
import numpy as np
from numba.core.runtime import rtsys
import codegen

mod = codegen.load_module(sys.argv[1])
configs = json.loads(sys.argv[2])
rng = np.random.default_rng(0)
n = int(sys.argv[3])
X = rng.standard_normal((n,) + mod.INPUT_SHAPE).astype(np.float32)
if mod.CLASSES is not None:
    Y = rng.integers(0, mod.CLASSES, n)
else:
    Y = rng.standard_normal((n,) + mod.TARGET_SHAPE).astype(np.float32)
params = mod.init_params(0, np.float32)

def fit(optimizer, epochs, batch, shuffle):
    out = mod.fit(params, X, Y, optimizer=optimizer, lr=0.01, epochs=epochs,
                  batch_size=batch, shuffle=shuffle, seed=1)
    assert out[0][0].dtype == np.float32

def allocations(*args):
    before = rtsys.get_allocation_stats().alloc
    fit(*args)
    return rtsys.get_allocation_stats().alloc - before

result = {}
for optimizer, batch, shuffle, epochs in configs:
    fit(optimizer, 1, batch, shuffle)  # compile
for optimizer, batch, shuffle, epochs in configs:
    key = f"{optimizer} {batch} {shuffle}"
    result.setdefault(key, {})[str(epochs)] = allocations(optimizer, epochs, batch, shuffle)
print("ALLOCATIONS " + json.dumps(result))
"""


def _key(optimizer: str, shuffle: bool) -> str:
    return f"{optimizer} {BATCH} {shuffle}"


@pytest.fixture(scope="module")
def allocation_counts(tmp_path_factory):
    """{model: {"<optimizer> <batch> <shuffle>": {"1": n, "4": n}}}, one subprocess per model."""
    out = tmp_path_factory.mktemp("alloc_modules")
    configs = [[opt, BATCH, shuffle, epochs]
               for opt in OPTIMIZERS for shuffle in SHUFFLE for epochs in EPOCHS]
    env = {**os.environ, "NUMBA_NRT_STATS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    counts = {}
    for model, spec in SPECS.items():
        path = codegen.generate(spec, out, verify=False)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(configs),
                               str(N_ROWS)], env=env, cwd=str(out), capture_output=True,
                              text=True, timeout=600)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ALLOCATIONS ")]
        assert proc.returncode == 0 and lines, f"{model}: child failed:\n{proc.stderr[-3000:]}"
        counts[model] = json.loads(lines[-1][len("ALLOCATIONS "):])
    return counts


@pytest.mark.parametrize("shuffle", SHUFFLE, ids=["in-order", "shuffled"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("model", list(SPECS))
def test_no_allocation_per_step(allocation_counts, model, optimizer, shuffle):
    counts = allocation_counts[model][_key(optimizer, shuffle)]
    one, four = counts["1"], counts["4"]
    extra_epochs = EPOCHS[1] - EPOCHS[0]
    assert four == one, (
        f"{model}, {optimizer}, batch {BATCH} of {N_ROWS} rows, shuffle={shuffle}: fit made "
        f"{one} Numba NRT allocations for 1 epoch but {four} for 4 epochs: "
        f"{(four - one) / extra_epochs:g} per epoch = "
        f"{(four - one) / (extra_epochs * STEPS_PER_EPOCH):g} per step "
        f"({STEPS_PER_EPOCH} steps per epoch); buffers must be allocated once per fit call")
