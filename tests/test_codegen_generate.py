"""codegen.generate: verification gates installation, atomic and byte-stable writes, no stale code."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import codegen
import codegen.pipeline as gen
from symbolic import Reference, derive, load_spec

ROOT = Path(__file__).resolve().parent.parent
S1 = ROOT / "examples/s1_linear_regression.toml"
S5 = ROOT / "examples/s5_tiny_mlp.toml"


@pytest.mark.reliability("C16")
def test_corrupted_gradients_fail_verification_and_nothing_is_installed(tmp_path, monkeypatch):
    d = derive(load_spec(S5))
    good = codegen.render_module(d)
    # two mutations from VERIFICATION.md §10: one gradient scaled by 1 + 1e-4, one missing 1/n
    scaled = re.compile(r"^(    grad_W1\[\d+, \d+\] = _g\d+)$", re.M)  # W1's sums stored
    mean = "        g *= scale\n"  # loss_and_grad: each gradient sum made the mean
    assert len(scaled.findall(good)) == 50 and good.count(mean) == 1
    bad = scaled.sub(r"\1*_F(1.0001)", good)
    bad = bad.replace(mean, "        g *= scale if g is not grads[3] else 1  # b2: no 1/n\n")
    out = tmp_path / "out"
    codegen.generate(d, out, verify=False)  # a previous module of the same name
    (out / "s5_tiny_mlp.check.json").write_text("{}")
    monkeypatch.setattr(gen, "render_module", lambda _: bad)
    with pytest.raises(codegen.VerificationError) as info:
        codegen.generate(d, out)
    report = info.value.report
    assert not report.ok
    failing = {row.name for row in report.rows if row.status != "ok"}
    assert {"W1", "b2"} <= failing and not failing & {"W2", "b1"}
    assert "W1" in str(info.value) and "b2" in str(info.value)
    assert "W1" in report.table()
    assert not (out / "s5_tiny_mlp.py").exists()
    assert not (out / "s5_tiny_mlp.check.json").exists()


@pytest.mark.reliability("B14")
def test_regenerating_an_unchanged_spec_leaves_files_untouched(tmp_path):
    out = tmp_path / "gen"
    module = codegen.generate(S1, out)
    report = out / "s1_linear_regression.check.json"
    assert module == out / "s1_linear_regression.py" and report.exists()
    data = json.loads(report.read_text())
    assert data["ok"] and data["module_sha256"] == gen.content_hash(module.read_text())
    before = (module.stat().st_mtime_ns, report.stat().st_mtime_ns)
    texts = (module.read_bytes(), report.read_bytes())
    time.sleep(0.05)
    codegen.generate(S1, out)  # verified again: the report is deterministic too
    codegen.generate(S1, out, verify=False)
    assert (module.stat().st_mtime_ns, report.stat().st_mtime_ns) == before
    assert (module.read_bytes(), report.read_bytes()) == texts
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.reliability("B14")
def test_changing_the_spec_changes_results(tmp_path):
    spec = tmp_path / "drift.toml"
    text = S1.read_text().replace('name = "s1_linear_regression"', 'name = "drift"')
    spec.write_text(text)
    out = tmp_path / "gen"
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(8, 3)), rng.normal(size=8)
    params = {"w": np.array([0.5, -1.0, 2.0]), "b": np.array(0.25)}
    losses = []
    for loss_expr in ("square(yhat - y) / 2", "square(yhat - y)", "square(yhat - y) * 3"):
        spec.write_text(text.replace("square(yhat - y) / 2", loss_expr))
        path = codegen.generate(spec, out, verify=False)
        module = codegen.load_module(path)
        value, grads = module.loss_and_grad(params, X, Y)
        ref_value, ref_grads = Reference(derive(load_spec(spec))).loss_and_grad(params, X, Y)
        assert value == pytest.approx(ref_value, rel=1e-12)
        np.testing.assert_allclose(grads.w, ref_grads["w"], rtol=1e-10)
        losses.append(value)
    assert losses[1] == pytest.approx(2 * losses[0]) and losses[2] == pytest.approx(6 * losses[0])


def test_check_renders_into_a_temporary_place_and_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(S1, tmp_path / "s1.toml")
    report = codegen.check("s1.toml")
    assert report.ok, report.table()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.toml"]


def test_write_atomic(tmp_path):
    path = tmp_path / "a" / "f.txt"
    assert codegen.write_atomic(path, "one\n")
    assert not codegen.write_atomic(path, "one\n")
    assert codegen.write_atomic(path, "two\n") and path.read_text() == "two\n"
    assert oct(path.stat().st_mode & 0o777) == oct(gen._FILE_MODE)


def test_scalar_parameters_may_share_names_with_the_training_loop(tmp_path):
    """A scalar parameter is passed to the compiled functions under its own argument name, so
    names such as mu, eps or t (the training loop's _mu, _eps, _t) stay usable."""
    from symbolic import Spec

    names = ["mu", "t", "opt", "eps", "rho", "wd", "beta1", "beta2", "bs", "size", "value"]
    spec = Spec.build(name="scalar_names", inputs={"x": 2}, targets={"y": 1},
                      params={"W": {"shape": [1, 2]}, **{n: {"init": 0.1} for n in names}},
                      model={"z": "W @ x + " + " + ".join(names)}, loss="mse(z, y)")
    module = codegen.load_module(codegen.generate(derive(spec), tmp_path))
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(9, 2)), rng.normal(size=(9, 1))
    fitted, history, _ = module.fit(module.init_params(0), X, Y, optimizer="adam", lr=0.01,
                                    epochs=3, batch_size=4)
    assert np.isfinite(history).all() and history[-1] < history[0]
    assert fitted.mu != 0.1
