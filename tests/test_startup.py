"""Start-up: what ``codegen.generate`` compiles while verifying is not compiled again.

The check imports the rendered module from a temporary copy (under the module's final name, with
Numba's disk cache off) and, once the module is installed, saves the compiled functions into
Numba's cache of the installed file. The check runs the training kernel ``_step`` (and the
buffer makers it needs) and nothing else, so the first training step compiles only the training
loop. These tests pin that down without timing anything: Numba's dispatcher statistics and
compile events say whether a function was compiled or loaded, and the cache folders say what was
written. A failed check still installs and caches nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numba.core.config
import numpy as np
import pytest
from numba.core import event

import codegen
import codegen.pipeline as gen
from symbolic import derive, spec_from_toml

ROOT = Path(__file__).resolve().parent.parent
S1 = ROOT / "examples/s1_linear_regression.toml"

# appended to a rendered module: the public loss_and_grad returns twice the true gradient
# (whatever the template's kernel looks like), so the finite-difference check fails
DOUBLED = """

_true_loss_and_grad = loss_and_grad


def loss_and_grad(params, X, Y):
    value, grads = _true_loss_and_grad(params, X, Y)
    return value, Params(*[2 * g for g in grads])
"""

KERNEL = {"_step", "_gradients", "_buffers"}  # what the check compiles (float64)
TRAINING_LOOP = {"_fit_epochs", "_update", "_gather", "_shuffle_into"}

# appended to a rendered module: the training kernel's loss and its gradient sums both doubled,
# consistently (the gradient is still the derivative of the loss it returns), for loss_and_grad
# and for the loss the check differences alike
DOUBLED_KERNEL = """

_true_step = _step


def _step(*args):  # (params…, X, Y, _grads, _bufs, _lr)
    value = _true_step(*args)
    for g in args[-3]:
        g *= 2
    return 2 * value
"""

FIRST_CALL = """
import json, sys
import numpy as np
import codegen
module = codegen.load_module(sys.argv[1])
rng = np.random.default_rng(0)
X = rng.normal(size=(4, *module.INPUT_SHAPE))
Y = rng.normal(size=(4, *module.TARGET_SHAPE))
params = module.init_params(3)
value, _ = module.loss_and_grad(params, X, Y)
print(json.dumps({"value": value, "stats": {
    name: {"hits": sum(f.stats.cache_hits.values()), "misses": sum(f.stats.cache_misses.values()),
           "path": f.stats.cache_path}
    for name, f in (("_step", module._step), ("_gradients", module._gradients),
                    ("_buffers", module._buffers))}}))
"""

# the first training step in a fresh process: one epoch of shuffled minibatches (so rows are
# gathered), Adam, float64; per function, the signatures compiled (cache misses) and loaded
FIRST_STEP = """
import json, sys
import numpy as np
import codegen
module = codegen.load_module(sys.argv[1])
rng = np.random.default_rng(0)
X = rng.normal(size=(8, *module.INPUT_SHAPE))
Y = rng.normal(size=(8, *module.TARGET_SHAPE))
module.fit(module.init_params(3), X, Y, optimizer="adam", lr=1e-3, epochs=1, batch_size=4)
print(json.dumps({name: {"compiled": [str(s) for s, n in f.stats.cache_misses.items() if n],
                         "hits": sum(f.stats.cache_hits.values())}
                  for name, f in codegen.pipeline._dispatchers(module).items()}))
"""


def _derivation(name: str):
    return derive(spec_from_toml(S1.read_text().replace('name = "s1_linear_regression"',
                                                        f'name = "{name}"')))


@pytest.fixture
def numba_cache(tmp_path, monkeypatch):
    """A fresh Numba cache folder for this test (this process and its subprocesses)."""
    folder = tmp_path / "numba"
    folder.mkdir()
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(folder))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder for this test only, to see what generate leaves there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


class _Compiles:
    """Names of the functions Numba compiles while active, of modules named like ``module_name``
    (``symgrad_check_<name>_<digest>`` included)."""

    def __init__(self, module_name: str):
        self.module_name = module_name
        self.names: list[str] = []

    def __enter__(self):
        outer = self

        class Listener(event.Listener):
            def on_start(self, ev):
                pass

            def on_end(self, ev):
                func = ev.data["dispatcher"].py_func
                if outer.module_name in func.__module__:
                    outer.names.append(func.__name__)

        self.listener = Listener()
        event.register("numba:compile", self.listener)
        return self

    def __exit__(self, *exc):
        event.unregister("numba:compile", self.listener)


def test_the_installed_module_loads_what_the_check_compiled(tmp_path, numba_cache, private_tmp):
    d = _derivation("startup_reuse")
    out = tmp_path / "out"
    with _Compiles("startup_reuse") as compiles:
        path = codegen.generate(d, out)
    # compiled once each, by the check: the training kernel only, not the array-code loss
    assert sorted(compiles.names) == sorted(KERNEL)
    assert "startup_reuse" not in sys.modules  # the temporary import is gone
    assert sorted(p.name for p in out.iterdir()) == ["startup_reuse.check.json",
                                                     "startup_reuse.py"]
    assert list(private_tmp.iterdir()) == []  # the temporary copy is deleted
    # Numba's cache holds entries for the installed file only (none for the temporary copy)
    folders = [p for p in numba_cache.iterdir()]
    assert len(folders) == 1 and folders[0].name.startswith("out_")
    assert {p.name.split("-")[0] for p in folders[0].glob("*.nbi")} == {
        f"startup_reuse.{name}" for name in KERNEL}
    # a fresh process imports the installed module: its first calls load, nothing compiles
    run = subprocess.run([sys.executable, "-c", FIRST_CALL, str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    for name, stats in result["stats"].items():
        assert stats["misses"] == 0 and stats["hits"] >= 1, (name, stats)
        assert Path(stats["path"]) == folders[0], (name, stats)
    module = codegen.load_module(path)  # and in this process, the same numbers
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, *module.INPUT_SHAPE))
    Y = rng.normal(size=(4, *module.TARGET_SHAPE))
    assert module.loss_and_grad(module.init_params(3), X, Y)[0] == result["value"]
    sys.modules.pop("startup_reuse", None)


def test_the_first_training_step_compiles_only_the_training_loop(tmp_path, numba_cache):
    """After generate, a fresh process's first fit loads the kernel the check compiled and
    compiles the training loop once per signature it needs (s1: X and Y rows are gathered with
    one _gather signature, float64 2-D both; a literal start index would add a second)."""
    path = codegen.generate(_derivation("startup_first_step"), tmp_path / "out")
    run = subprocess.run([sys.executable, "-c", FIRST_STEP, str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads(run.stdout)
    compiled = {name: s["compiled"] for name, s in stats.items() if s["compiled"]}
    assert set(compiled) == TRAINING_LOOP, compiled
    assert all(len(sigs) == 1 for sigs in compiled.values()), compiled
    assert "Literal" not in compiled["_gather"][0]
    for name in KERNEL:
        assert stats[name]["hits"] >= 1, (name, stats[name])


def test_regenerating_an_installed_module_checks_it_in_place_without_compiling(
        tmp_path, numba_cache):
    d = _derivation("startup_again")
    out = tmp_path / "out"
    path = codegen.generate(d, out)
    report = (out / "startup_again.check.json").read_bytes()
    mtime = path.stat().st_mtime_ns
    with _Compiles("startup_again") as compiles:
        assert codegen.generate(d, out) == path
    assert compiles.names == []  # loaded from the installed file's cache
    assert path.stat().st_mtime_ns == mtime
    assert (out / "startup_again.check.json").read_bytes() == report
    assert "startup_again" not in sys.modules


@pytest.mark.parametrize("installed_before", [False, True])
def test_a_failed_check_installs_and_caches_nothing(installed_before, tmp_path, numba_cache,
                                                    private_tmp, monkeypatch):
    d = _derivation("startup_bad")
    bad = gen.render_module(d) + DOUBLED
    out = tmp_path / "out"
    monkeypatch.setattr(gen, "render_module", lambda _: bad)
    if installed_before:  # the same text already installed, unchecked: it is checked in place
        codegen.generate(d, out, verify=False)
        module = codegen.load_module(out / "startup_bad.py")
        module.loss(module.init_params(0), np.ones((2, 3)), np.ones(2))  # fills its cache
        assert any(numba_cache.rglob("startup_bad._loss-*.nbi"))
        sys.modules.pop("startup_bad")
    with pytest.raises(codegen.VerificationError):
        codegen.generate(d, out)
    assert not out.exists() or list(out.iterdir()) == []
    assert list(numba_cache.rglob("*.nb*")) == []  # no cache entry for any copy of it
    assert list(private_tmp.iterdir()) == []
    assert "startup_bad" not in sys.modules


def test_a_name_taken_by_another_module_is_checked_under_a_private_name(tmp_path, numba_cache):
    """The compiled code records its module's name; when that name is taken by a module that is
    not a generated one, the check runs under another name and nothing is saved for reuse."""
    d = _derivation("startup_taken")
    placeholder = types.ModuleType("startup_taken")
    sys.modules["startup_taken"] = placeholder
    try:
        path = codegen.generate(d, tmp_path / "out")
        assert sys.modules["startup_taken"] is placeholder
    finally:
        sys.modules.pop("startup_taken", None)
    assert path.exists() and json.loads(path.with_suffix(".check.json").read_text())["ok"]
    assert list(numba_cache.rglob("*.nb*")) == []


def test_check_leaves_nothing_in_numba_cache(tmp_path, numba_cache, private_tmp):
    report = codegen.check_text(gen.render_module(_derivation("startup_check")),
                                _derivation("startup_check"))
    assert report.ok, report.table()
    assert list(numba_cache.iterdir()) == [] and list(private_tmp.iterdir()) == []


def test_a_kernel_whose_loss_is_not_the_models_fails_the_check(numba_cache):
    """The loss the check differences is the kernel's own: a kernel whose loss and gradient agree
    with each other but not with the model passes every finite difference, and is caught by the
    comparison with the derivation's reference evaluator."""
    d = _derivation("startup_twice")
    report = codegen.check_text(gen.render_module(d) + DOUBLED_KERNEL, d)
    assert not report.ok and report.status == "wrong"
    assert all(row.status == "ok" for row in report.rows), report.table()
    assert len(report.loss_mismatches) == report.points
    assert all("reference evaluator" in m for m in report.loss_mismatches)
    assert codegen.check_text(gen.render_module(d), d).ok  # the same module, undoubled


def test_verify_compares_the_loss_with_the_reference_evaluator():
    from symbolic.evaluate import Reference
    from symbolic.verify import verify

    d = _derivation("startup_reference")
    ref = Reference(d)

    def loss(p, X, Y):
        return 2 * ref.loss(p, X, Y)

    def loss_and_grad(p, X, Y):
        value, grads = ref.loss_and_grad(p, X, Y)
        return 2 * value, {k: 2 * g for k, g in grads.items()}

    assert verify(d, loss, loss_and_grad).ok  # consistent with itself: every FD agrees
    report = verify(d, loss, loss_and_grad, against_reference=True)
    assert report.status == "wrong" and len(report.loss_mismatches) == report.points
