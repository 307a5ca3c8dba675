"""The derivation: every example's gradients are proven by finite differences, the notation and
simplifications of the seed documents appear, and the cost does not grow with layer widths."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbolic import Reference, Spec, derive, load_spec
from symbolic.functions import MatProd, OneHot, Outer, Relu, Softmax, Step, Transposed
from symbolic.verify import verify_reference
from strategies import vector_expr

derive_module = importlib.import_module("symbolic.derive")  # the package exports derive(), too

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml")) + [ROOT / "symgrad/specs/digits_mlp.toml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_passes_the_finite_difference_check(path):
    d = derive(load_spec(path))
    report = verify_reference(d)
    assert report.ok, report.table()
    assert report.margin <= 0.1
    assert {row.name for row in report.rows} == {p.name for p in d.spec.params}


def _sym(d, name):
    return d.values[name].symbol


def test_mlp_follows_the_seed_notation():
    d = derive(load_spec(ROOT / "examples/s2_mnist_mlp.toml"))
    s = lambda n: _sym(d, n)  # noqa: E731
    forward = {step.name: step.expr for step in d.forward}
    assert forward["z1"] == MatProd(s("W1"), s("x")) + s("b1")
    assert forward["h"] == Relu(s("z1"))
    deltas = {step.of: step.expr for step in d.backward if step.role == "delta"}
    # δ⁽²⁾ = softmax(z) − y  (softmax + cross-entropy)
    assert deltas["z"] == Softmax(s("z")) - OneHot(s("y"), 10)
    assert {"softmax_cross_entropy", "relu_derivative", "logsumexp"} <= {r.name for r in d.rules}
    # δ⁽¹⁾ = ((W⁽²⁾)ᵀ δ⁽²⁾) ⊙ relu'(z⁽¹⁾)
    assert deltas["h"] == MatProd(Transposed(s("W2")), s("delta_z"))
    assert deltas["z1"] == s("delta_h") * Step(s("z1"))
    grads = {step.of: step.expr for step in d.backward if step.role == "grad"}
    # ∂ℓ/∂W⁽ˡ⁾ = δ⁽ˡ⁾ (a⁽ˡ⁻¹⁾)ᵀ,  ∂ℓ/∂b⁽ˡ⁾ = δ⁽ˡ⁾
    assert grads["W1"] == Outer(s("delta_z1"), s("x"))
    assert grads["W2"] == Outer(s("delta_z"), s("h"))
    assert grads["b1"] == s("delta_z1") and grads["b2"] == s("delta_z")


def test_sigmoid_bce_simplifies_to_prediction_minus_target():
    d = derive(load_spec(ROOT / "examples/logistic_regression.toml"))
    delta = d.deltas["z"].expr
    from symbolic.functions import Sigmoid

    assert delta == Sigmoid(_sym(d, "z")) - _sym(d, "y")
    assert "sigmoid_bce" in {r.name for r in d.rules}


def _mlp(width: int, hidden: list[int]) -> Spec:
    sizes = [width, *hidden, 10]
    params, model = {}, {}
    prev = "x"
    for i in range(1, len(sizes)):
        params[f"W{i}"] = {"shape": [sizes[i], sizes[i - 1]], "init": "he"}
        params[f"b{i}"] = {"shape": [sizes[i]]}
        line = f"W{i} @ {prev} + b{i}"
        name = f"h{i}" if i < len(sizes) - 1 else "z"
        model[name] = f"relu({line})" if i < len(sizes) - 1 else line
        prev = name
    return Spec.build(name="mlp", inputs={"x": width}, targets={"y": {"classes": 10}},
                      params=params, model=model, loss="softmax_cross_entropy(z, y)")


def test_derivation_does_not_depend_on_layer_widths():
    narrow = derive(_mlp(784, [128]))
    wide = derive(_mlp(7840, [1280]))
    assert [(s.name, s.expr) for s in narrow.backward] == [(s.name, s.expr) for s in wide.backward]
    assert [s.shape for s in wide.backward if s.of == "W1"] == [(1280, 7840)]


def test_closed_form_linear_regression_gradient():
    d = derive(load_spec(ROOT / "examples/s1_linear_regression.toml"))
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    w, b = rng.normal(size=3), 0.3
    loss, grads = Reference(d).loss_and_grad({"w": w, "b": np.array(b)}, X, y)
    r = X @ w + b - y
    assert loss == pytest.approx(np.mean(r**2) / 2, rel=1e-12)
    np.testing.assert_allclose(grads["w"], X.T @ r / len(X), rtol=1e-12)
    assert float(grads["b"]) == pytest.approx(r.mean(), rel=1e-12)


def test_l2_penalty_applies_to_weights_only():
    spec = load_spec(ROOT / "examples/tanh_three_layer.toml")
    d = derive(spec)
    assert d.l2_params == ["W1", "W2", "W3"]
    rng = np.random.default_rng(2)
    params = {p.name: rng.normal(size=p.shape) for p in spec.params}
    X, y = rng.normal(size=(5, 4)), np.array([0, 1, 2, 0, 1])
    without = derive(Spec.build(**{**_tables(spec), "loss": {"expr": spec.loss, "l2": 0.0}}))
    base, gbase = Reference(without).loss_and_grad(params, X, y)
    full, gfull = Reference(d).loss_and_grad(params, X, y)
    penalty = 0.5 * spec.l2 * sum(np.sum(params[n] ** 2) for n in ("W1", "W2", "W3"))
    assert full == pytest.approx(base + penalty, rel=1e-12)
    np.testing.assert_allclose(gfull["W2"], gbase["W2"] + spec.l2 * params["W2"], rtol=1e-12)
    np.testing.assert_array_equal(gfull["b2"], gbase["b2"])


def _tables(spec: Spec) -> dict:
    t = spec.to_dict()
    return {k: t[k] for k in ("name", "inputs", "targets", "params", "functions", "model", "train")}


def _logit_spec(loss: str, classes: bool) -> Spec:
    return Spec.build(name="logits", inputs={"x": 3},
                      targets={"y": {"classes": 3} if classes else 3},
                      params={"b": {"shape": [3]}}, model={"z": "x + b"}, loss=loss)


@pytest.mark.parametrize("label, expected", [(0, 0.0), (1, 1000.0), (2, 2000.0)])
@pytest.mark.reliability("D22")
def test_softmax_cross_entropy_of_huge_logits_is_exact(label, expected):
    ref = Reference(derive(_logit_spec("softmax_cross_entropy(z, y)", classes=True)))
    loss, grads = ref.sample({"b": np.zeros(3)}, np.array([1000.0, 0.0, -1000.0]), label)
    assert loss == pytest.approx(expected, rel=1e-12, abs=1e-12)
    expected_grad = np.array([1.0, 0.0, 0.0]) - np.eye(3)[label]
    np.testing.assert_allclose(grads["b"], expected_grad, atol=1e-12)


@pytest.mark.reliability("D23")
def test_bce_with_logits_matches_keras_case_and_stays_finite():
    ref = Reference(derive(_logit_spec("bce_with_logits(z, y)", classes=False)))
    X = np.array([[100.0, -100.0, 100.0], [100.0, 100.0, -100.0]])
    Y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert ref.loss({"b": np.zeros(3)}, X, Y) == pytest.approx(100 / 3, rel=1e-12)
    single = Reference(derive(Spec.build(
        name="one", inputs={"x": 1}, targets={"y": 1}, params={"b": {}}, model={"z": "x + b"},
        loss="bce_with_logits(z, y)")))
    loss, grads = single.sample({"b": np.array(0.0)}, 40.0, 0.0)
    assert loss == pytest.approx(40.0, rel=1e-12)
    assert float(grads["b"]) == pytest.approx(1 / (1 + math.exp(-40.0)), rel=1e-12)


@pytest.mark.reliability("D24")
def test_equal_logits_give_log_of_class_count():
    ref = Reference(derive(Spec.build(
        name="zero", inputs={"x": 4}, targets={"y": {"classes": 10}},
        params={"W": {"shape": [10, 4], "init": "zeros"}, "b": {"shape": [10]}},
        model={"z": "W @ x + b"}, loss="softmax_cross_entropy(z, y)")))
    loss, grads = ref.sample({"W": np.zeros((10, 4)), "b": np.zeros(10)}, np.ones(4), 3)
    assert loss == pytest.approx(math.log(10), rel=1e-15)
    np.testing.assert_allclose(grads["b"], np.full(10, 0.1) - np.eye(10)[3], atol=1e-15)


@pytest.mark.reliability("D25")
def test_hand_written_bce_becomes_the_logits_form():
    spec = Spec.build(name="hand", inputs={"x": 1}, targets={"y": 1}, params={"b": {}},
                      model={"z": "x + b"},
                      loss="-y*log(sigmoid(z)) - (1 - y)*log(1 - sigmoid(z))")
    d = derive(spec)
    assert "sigmoid_bce" in {r.name for r in d.rules}
    ref = Reference(d)
    for z, y in ((40.0, 0.0), (-40.0, 1.0), (40.0, 1.0)):
        loss, grads = ref.sample({"b": np.array(0.0)}, z, y)
        assert math.isfinite(loss) and math.isfinite(float(grads["b"]))
    assert ref.sample({"b": np.array(0.0)}, 40.0, 0.0)[0] == pytest.approx(40.0, rel=1e-12)


@pytest.mark.reliability("C18")
def test_kink_conventions():
    z = sp.Symbol("z", real=True)
    assert Step.numpy(np.array([0.0]))[0] == 0.0  # relu'(0) = 0
    assert sp.diff(Relu(z), z) == Step(z)
    assert sp.diff(sp.Abs(z), z).subs(z, 0) == 0  # abs'(0) = 0
    for path in EXAMPLES:
        d = derive(load_spec(path))
        for step in d.forward + d.backward:
            assert not step.expr.has(sp.Heaviside)


# ---------------------------------------------------------------------------- property test

LOSSES = ["mse({e}, y)", "huber({e}, y, 0.5)", "bce_with_logits({e}, y)", "mae({e}, y)",
          "logsumexp({e}) - dot(y, {e})", "sum(square({e} - y)) + mean({e})",
          "dot(v, {e}) * s"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=vector_expr(4), loss=st.sampled_from(LOSSES), m=st.integers(1, 6),
       d=st.integers(1, 6), seed=st.integers(0, 1000))
def test_random_compositions_pass_the_finite_difference_check(expr, loss, m, d, seed):
    spec = Spec.build(
        name="random", inputs={"x": {"shape": [d]}}, targets={"y": {"shape": [m]}},
        params={"W": {"shape": [m, d]}, "V": {"shape": [m, m]}, "b": {"shape": [m]},
                "v": {"shape": [m]}, "s": {"init": 0.7}},
        functions={"swish": "z * sigmoid(z)"},
        model={"out": expr}, loss=loss.format(e="out"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        derivation = derive(spec)
    report = verify_reference(derivation, seed=seed)
    assert report.status != "wrong", report.table() + "\n" + "\n".join(report.failures())
    assert report.ok or report.status in ("inconclusive", "too small to judge"), report.table()


def test_a_product_of_many_sums_is_not_multiplied_out(monkeypatch):
    """Expanding the gradient of Π_k (w_k x + b) would give 12·2¹¹ terms (half a minute of
    SymPy): the chain-rule sum is kept factored, and its gradient still passes the FD check."""
    expand, sizes = sp.expand, []

    def recording_expand(expr, *args, **kwargs):
        sizes.append(derive_module._expanded_terms(sp.sympify(expr)))
        return expand(expr, *args, **kwargs)

    monkeypatch.setattr(derive_module.sp, "expand", recording_expand)
    k = 12
    params = {f"w{i}": {} for i in range(k)} | {"b": {}}
    product = " * ".join(f"(w{i} * x + b)" for i in range(k))
    spec = Spec.build(name="many_sums", inputs={"x": 1}, targets={"y": 1}, params=params,
                      model={"yhat": product}, loss="mse(yhat, y)")
    d = derive(spec)
    monkeypatch.undo()
    assert sizes and max(sizes) <= derive_module.TIDY_MAX_TERMS
    assert len(sp.Add.make_args(d.grads["b"].expr)) <= 2 * k
    report = verify_reference(d, seed=0)
    assert report.ok, report.table()
