"""The finite-difference checker against hand-written numpy models with exact gradients.

Covers VERIFICATION.md and RELIABILITY_CASES.md C.15-17, 21: correct gradients pass with
margin <= 0.1, mutated ones are named, kinks are skipped, tiny and badly scaled losses are
never called wrong, and nothing is evaluated outside float64.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbolic.check import (
    INCONCLUSIVE,
    OK,
    TOO_SMALL,
    WRONG,
    CheckReport,
    Params,
    check_gradients,
    fd_step,
    near_kink,
    random_point,
    replace_zero_tensors,
)

Grads = Callable[[Params], tuple[float, Params]]


@dataclass
class Model:
    """A loss, its exact loss-and-gradient, parameter shapes and (optionally) kink masks."""

    loss: Callable[[Params], float]
    loss_and_grad: Grads
    shapes: dict[str, tuple[int, ...]]
    kink_masks: Callable[[Params], np.ndarray] | None = None

    def points(self, seeds: tuple[int, ...] = (1, 2, 3)) -> list[Params]:
        return [random_point(self.shapes, s) for s in seeds]

    def check(self, grads: Grads | None = None, points: list[Params] | None = None,
              seed: int = 0) -> CheckReport:
        return check_gradients(self.loss, grads or self.loss_and_grad, points or self.points(),
                               kink_masks=self.kink_masks, seed=seed)


def linear_regression(n: int = 4, d: int = 3, seed: int = 0, drop_bias: bool = False) -> Model:
    """S1: L = 1/(2n) sum (X w + b - y)^2;  dw = X^T r / n,  db = mean(r)."""
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(n, d)), rng.normal(size=n)

    def loss(p: Params) -> float:
        r = X @ p["w"] + p["b"] - y
        return float(r @ r / (2 * n))

    def loss_and_grad(p: Params) -> tuple[float, Params]:
        r = X @ p["w"] + p["b"] - y
        r_grad = X @ p["w"] - y if drop_bias else r  # mutation: the bias forgotten in backward
        return float(r @ r / (2 * n)), {"w": X.T @ r_grad / n, "b": np.asarray(r_grad.mean())}

    return Model(loss, loss_and_grad, {"w": (d,), "b": ()})


def softmax_regression(n: int = 4, d: int = 3, c: int = 3, seed: int = 0) -> Model:
    """S3: L = mean CE(softmax(W x + b), y);  dZ = (P - Y)/n, dW = dZ^T X, db = sum dZ."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = np.eye(c)[np.arange(n) % c]  # covers every class

    def forward(p: Params) -> tuple[float, np.ndarray]:
        Z = X @ p["W"].T + p["b"]
        Z = Z - Z.max(axis=1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
        return float(-(Y * logp).sum() / n), np.exp(logp)

    def loss_and_grad(p: Params) -> tuple[float, Params]:
        value, P = forward(p)
        dZ = (P - Y) / n
        return value, {"W": dZ.T @ X, "b": dZ.sum(axis=0)}

    return Model(lambda p: forward(p)[0], loss_and_grad, {"W": (c, d), "b": (c,)})


def relu_net(X: np.ndarray, Y: np.ndarray, hidden: int = 4) -> Model:
    """S5: L = 1/(2n) sum ||W2 relu(W1 x + b1) + b2 - y||^2 with its exact backward."""
    n, d = X.shape

    def forward(p: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        Z1 = X @ p["W1"].T + p["b1"]
        A1 = np.maximum(Z1, 0.0)
        return Z1, A1, A1 @ p["W2"].T + p["b2"] - Y

    def loss(p: Params) -> float:
        R = forward(p)[2]
        return float((R * R).sum() / (2 * n))

    def loss_and_grad(p: Params) -> tuple[float, Params]:
        Z1, A1, R = forward(p)
        dZ2 = R / n
        dZ1 = (dZ2 @ p["W2"]) * (Z1 > 0)  # relu'(0) = 0
        grads = {"W1": dZ1.T @ X, "b1": dZ1.sum(axis=0), "W2": dZ2.T @ A1, "b2": dZ2.sum(axis=0)}
        return float((R * R).sum() / (2 * n)), grads

    shapes = {"W1": (hidden, d), "b1": (hidden,), "W2": (Y.shape[1], hidden), "b2": (Y.shape[1],)}
    return Model(loss, loss_and_grad, shapes,
                 kink_masks=lambda p: (X @ p["W1"].T + p["b1"] > 0).ravel())


def small_relu_net(zero_row: bool = False) -> Model:
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    if zero_row:
        X[2] = 0.0
    return relu_net(X, Y)


def mutate(grads: Grads, name: str, change: Callable[[np.ndarray], np.ndarray]) -> Grads:
    """``grads`` with one tensor's gradient corrupted by ``change``."""
    def corrupted(p: Params) -> tuple[float, Params]:
        value, g = grads(p)
        return value, {**g, name: change(g[name])}
    return corrupted


def assert_names_failure(report: CheckReport, name: str) -> None:
    """The check fails as "wrong" and a failure line names tensor, index, analytic, numeric."""
    assert not report.ok
    row = report.row(name)
    assert row.status == WRONG
    assert row.worst is not None and row.worst.target == name
    line = next(f for f in report.failures() if f.startswith(f"{name}:"))
    assert f"{row.worst.label}" in line
    assert f"analytic {row.worst.analytic:.12g}" in line
    assert f"numeric {row.worst.numeric:.12g}" in line
    assert abs(row.worst.analytic - row.worst.numeric) > row.worst.tol


# --------------------------------------------------------------------------- correct gradients


@pytest.mark.parametrize("make", [linear_regression, softmax_regression, small_relu_net],
                         ids=["linreg", "softmax", "relu"])
@pytest.mark.reliability("C15")
def test_correct_gradient_passes_with_margin(make: Callable[[], Model]) -> None:
    report = make().check()
    assert report.ok, report.table()
    assert report.margin <= 0.1
    assert report.points == 3
    assert {r.name for r in report.rows} == set(make().shapes)
    for row in report.rows:  # every tensor listed, with its errors (C.15)
        assert row.status == OK and row.checked > 0
        assert row.max_abs_err >= 0 and row.max_rel_err >= 0
    assert len(report.directions) == 3 * 3


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), d=st.integers(1, 5), c=st.integers(2, 4), seed=st.integers(0, 10**6))
def test_softmax_regression_passes_at_random_sizes(n: int, d: int, c: int, seed: int) -> None:
    model = softmax_regression(n, d, c, seed)
    report = model.check(points=model.points((seed, seed + 1)))
    assert report.ok and report.margin <= 0.1, report.table()


def test_large_tensor_checks_random_entries_plus_first_and_last() -> None:
    model = softmax_regression(n=4, d=200, c=3)  # W has 600 entries > 512
    report = model.check(seed=5)
    assert report.row("W").checked == 3 * 34  # 32 random + first + last, at each of 3 points
    assert report.row("b").checked == 3 * 3
    assert report.ok, report.table()
    assert model.check(seed=5).to_dict() == report.to_dict()  # the seed fixes the entries


def test_report_table_and_json() -> None:
    report = linear_regression().check()
    text = report.table()
    assert "max rel err" in text and "overall: ok" in text
    assert all(name in text for name in ("w", "b", "directions"))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and [r["name"] for r in data["rows"]] == ["w", "b"]


# --------------------------------------------------------------------------- mutation tests (C.16)


@pytest.mark.reliability("C16")
def test_scaled_gradient_is_wrong() -> None:
    model = linear_regression()
    assert_names_failure(model.check(mutate(model.loss_and_grad, "w", lambda g: g * (1 + 1e-4))),
                         "w")


@pytest.mark.reliability("C16")
def test_transposed_square_weight_is_wrong() -> None:
    model = softmax_regression(d=3, c=3)
    report = model.check(mutate(model.loss_and_grad, "W", lambda g: g.T.copy()))
    assert_names_failure(report, "W")
    assert report.row("b").status == OK


@pytest.mark.reliability("C16")
def test_dropped_bias_term_is_wrong() -> None:
    model = linear_regression(drop_bias=True)
    report = model.check(model.loss_and_grad)
    assert_names_failure(report, "w")
    assert_names_failure(report, "b")


@pytest.mark.reliability("C16")
def test_flipped_sign_is_wrong() -> None:
    model = small_relu_net()
    report = model.check(mutate(model.loss_and_grad, "b2", lambda g: -g))
    assert_names_failure(report, "b2")
    assert all(report.row(name).status == OK for name in ("W1", "b1", "W2"))


@pytest.mark.reliability("C16")
def test_missing_one_over_n_is_wrong() -> None:
    model = small_relu_net()
    assert_names_failure(model.check(mutate(model.loss_and_grad, "W1", lambda g: g * 4)), "W1")


def test_loss_that_disagrees_with_loss_and_grad_is_wrong() -> None:
    model = linear_regression()
    report = check_gradients(lambda p: model.loss(p) * 2, model.loss_and_grad, model.points())
    assert report.status == WRONG
    assert report.failures()[0].startswith("point 0: loss() =")


# --------------------------------------------------------------------------- kinks (C.17)


@pytest.mark.reliability("C17")
def test_exact_kink_is_skipped_and_reported_not_wrong() -> None:
    model = small_relu_net(zero_row=True)
    points = [{**p, "b1": np.zeros(4)} for p in model.points()]  # z = 0 exactly for row 2
    report = model.check(points=points)
    assert report.status != WRONG
    b1 = report.row("b1")
    assert b1.skipped_kinks == 3 * 4 and b1.checked == 0 and b1.status == INCONCLUSIVE
    assert all(report.row(name).status == OK for name in ("W1", "W2", "b2"))
    assert report.kinks_per_point == [4 + 3] * 3  # every b1 entry and every direction
    assert any("crossed a kink" in n and "resample" in n for n in report.notes)
    assert any(f.startswith("b1: inconclusive: nothing compared") for f in report.failures())
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["rows"][1]["skipped_kinks"] == 12 and data["directions"][0]["numeric"] == "nan"

    blind = check_gradients(model.loss, model.loss_and_grad, points)  # without kink masks ...
    assert blind.row("b1").status == WRONG  # ... the relu'(0) = 0 convention reads as a bug


@pytest.mark.reliability("C17")
def test_near_kink_rejects_points_with_ties() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5))
    assert not near_kink(z)
    z[2] = 0.0  # an all-zero input row with zero bias
    assert near_kink(z)
    assert near_kink(np.array([1.0, -2.0, 1e-4])) and not near_kink(np.array([1.0, -2.0, 1e-2]))
    small_unit = np.array([[1.0, 1e-4], [-1.0, 1e-4]])  # unit 1 is small but far from its kink
    assert near_kink(small_unit) is True
    assert near_kink(small_unit, axis=0) is False


# --------------------------------------------------------------------------- scaling (C.21, point 6)


@pytest.mark.reliability("C21")
def test_tiny_loss_is_never_wrong() -> None:
    model = linear_regression()

    def tiny_grads(p: Params) -> tuple[float, Params]:
        value, g = model.loss_and_grad(p)
        return value * 1e-12, {k: v * 1e-12 for k, v in g.items()}

    report = check_gradients(lambda p: model.loss(p) * 1e-12, tiny_grads, model.points())
    assert report.status in (OK, TOO_SMALL)
    assert all(r.status in (OK, TOO_SMALL) for r in report.rows)
    assert report.status == TOO_SMALL and not report.ok  # not proven either
    assert any("rescale the loss" in n for n in report.notes)


def test_truncation_dominated_loss_is_inconclusive_not_wrong() -> None:
    k = 1000.0  # sin(k t): truncation error (k h)^2 / 6 ~ 1e-5 > rtol at the standard step

    def loss(p: Params) -> float:
        return float(np.sin(k * p["t"]).sum())

    def loss_and_grad(p: Params) -> tuple[float, Params]:
        return loss(p), {"t": k * np.cos(k * p["t"])}

    report = check_gradients(loss, loss_and_grad, [random_point({"t": (5,)}, 0)])
    row = report.row("t")
    assert row.status == INCONCLUSIVE and report.status == INCONCLUSIVE
    assert row.worst is not None and len(row.worst.rechecks) == 2  # raw values at h/4 and 4h
    assert "h^2" in row.worst.hint
    h4, _, n4 = row.worst.rechecks[0]  # at h/4 the estimate is within tolerance
    assert h4 == row.worst.h / 4 and abs(n4 - row.worst.analytic) <= row.worst.tol


def test_round_off_dominated_loss_is_inconclusive_not_wrong() -> None:
    def loss(p: Params) -> float:  # t^2 plus evaluation noise of 1e-9, like heavy cancellation
        t = p["t"]
        return float((t**2 + 1e-9 * np.sin(1e9 * t)).sum())

    def loss_and_grad(p: Params) -> tuple[float, Params]:
        return loss(p), {"t": 2 * p["t"]}

    report = check_gradients(loss, loss_and_grad, [random_point({"t": (3,)}, 0)])
    row = report.row("t")
    assert row.status == INCONCLUSIVE, report.table()
    assert row.worst is not None and "1/h" in row.worst.hint


# --------------------------------------------------------------------------- float64 only (C.20)


@pytest.mark.reliability("C20")
def test_float32_loss_is_refused() -> None:
    model = linear_regression()
    with pytest.raises(TypeError, match="float32"):
        check_gradients(lambda p: cast(float, np.float32(model.loss(p))), model.loss_and_grad,
                        model.points())


@pytest.mark.reliability("C20")
def test_float32_gradient_is_refused_naming_the_tensor() -> None:
    model = linear_regression()
    grads = mutate(model.loss_and_grad, "w", lambda g: g.astype(np.float32))
    with pytest.raises(TypeError, match="'w' is float32"):
        check_gradients(model.loss, grads, model.points())


def test_points_are_cast_to_float64() -> None:
    model = linear_regression()
    seen: set[np.dtype] = set()

    def loss(p: Params) -> float:
        seen.update(v.dtype for v in p.values())
        return model.loss(p)

    points = [{k: v.astype(np.float32) for k, v in p.items()} for p in model.points()]
    report = check_gradients(loss, model.loss_and_grad, points)
    assert seen == {np.dtype(np.float64)} and report.ok
    with pytest.raises(TypeError, match="complex"):
        check_gradients(loss, model.loss_and_grad, [{"w": np.ones(3, complex), "b": 0.0}])


# --------------------------------------------------------------------------- helpers


def test_fd_step_is_a_power_of_two_scaled_to_the_value() -> None:
    assert fd_step(0.0) == fd_step(0.9) == 2.0**-17
    big = fd_step(1000.0)
    assert math.log2(big).is_integer() and 2e-3 < big < 2e-2


def test_random_point_and_zero_replacement() -> None:
    shapes = {"W": (10, 784), "b": (10,), "s": ()}
    p = random_point(shapes, 3)
    assert {k: v.shape for k, v in p.items()} == shapes
    assert all(v.dtype == np.float64 for v in p.values())
    assert 0.4 / 28 < p["W"].std() < 0.6 / 28  # N(0, 0.5^2) / sqrt(784)
    assert np.array_equal(random_point(shapes, 3)["W"], p["W"])

    zeros = {"W": np.zeros((10, 784)), "b": np.ones(10)}
    fixed = replace_zero_tensors(zeros, seed=1)
    assert fixed["W"].any() and np.array_equal(fixed["b"], zeros["b"])
    assert not zeros["W"].any()  # the caller's arrays are untouched
