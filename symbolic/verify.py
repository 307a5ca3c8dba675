"""Prove a derivation's gradients: the VERIFICATION.md protocol, wired to a spec.

:func:`verify` takes any ``loss`` / ``loss_and_grad`` pair over parameter dicts (the reference
evaluator, or a generated module in float64) and checks it with central finite differences at
three seeded points: two random draws scaled by fan-in and one after a few optimizer steps from
the spec's own initialisation (all-zero tensors replaced by random values). Kinks are taken from
the derivation: points too close to a kink are redrawn, and pairs that cross one are skipped.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import sympy as sp

from .check import CheckReport, agree, check_gradients, near_kink, random_point, replace_zero_tensors
from .derive import Derivation
from .evaluate import DomainError, Reference

Params = dict[str, np.ndarray]
Batch = tuple[np.ndarray, np.ndarray]
LossFn = Callable[[Params, np.ndarray, np.ndarray], float]
LossGradFn = Callable[[Params, np.ndarray, np.ndarray], tuple[float, Params]]

SAMPLES = 4
BURN_IN_STEPS = 5
MAX_REDRAWS = 20


def needs_positive_inputs(d: Derivation) -> bool:
    """True when a forward formula has a log, a square root or a fractional power."""
    for step in d.forward:
        for node in sp.preorder_traversal(step.expr):
            if isinstance(node, sp.log) or (node.is_Pow and not node.exp.is_integer):
                return True
    return False


def check_data(d: Derivation, seed: int = 0, n: int = SAMPLES) -> Batch:
    """A small synthetic batch for the spec, targets of ≥ 2 classes.

    Inputs are standard normal, or uniform in [0.5, 2] when a formula has a log, a square root
    or a fractional power (so random inputs stay inside its domain).
    """
    spec = d.spec
    rng = np.random.default_rng([seed, 7])
    if needs_positive_inputs(d):
        X = rng.uniform(0.5, 2.0, size=(n, *spec.input_shape))
    else:
        X = rng.normal(size=(n, *spec.input_shape))
    if spec.classes:
        Y = np.arange(n) % spec.classes
        return X, Y
    Y = rng.normal(size=(n, *spec.target_shape))
    if d.task == "binary":
        Y = (np.arange(n * max(1, math.prod(spec.target_shape))) % 2).reshape(Y.shape) * 1.0
    elif "softmax_cross_entropy" in {r.name for r in d.rules}:
        Y = np.eye(spec.target_shape[0])[np.arange(n) % spec.target_shape[0]]
    return X, Y


def fan_in(d: Derivation) -> dict[str, int]:
    """Fan-in per parameter: the input size of a weight (out, in); 1 for vectors and scalars."""
    return {p.name: (p.shape[1] if len(p.shape) == 2 else 1) for p in d.spec.params}


def init_point(d: Derivation, seed: int) -> Params:
    """The spec's own initialisation (see :func:`symbolic.spec.INITS`), in float64."""
    rng = np.random.default_rng(seed)
    out: Params = {}
    for p in d.spec.params:
        fan_in_ = p.shape[-1] if p.shape else 1
        fan_out = p.shape[0] if p.shape else 1
        if isinstance(p.init, float):
            out[p.name] = np.full(p.shape, p.init)
        elif p.init == "zeros":
            out[p.name] = np.zeros(p.shape)
        elif p.init == "he":
            out[p.name] = rng.normal(0.0, math.sqrt(2.0 / fan_in_), p.shape)
        elif p.init == "lecun":
            out[p.name] = rng.normal(0.0, math.sqrt(1.0 / fan_in_), p.shape)
        elif p.init == "glorot":
            limit = math.sqrt(6.0 / (fan_in_ + fan_out))
            out[p.name] = rng.uniform(-limit, limit, p.shape)
        else:
            out[p.name] = rng.normal(0.0, 0.01, p.shape)
    return out


def verify(d: Derivation, loss: LossFn, loss_and_grad: LossGradFn, *,
           data: Batch | None = None, seed: int = 0, against_reference: bool = False
           ) -> CheckReport:
    """Check ``loss_and_grad`` against finite differences of ``loss`` (float64) for spec ``d``.

    With ``against_reference`` the value of ``loss`` at every check point must also equal the
    reference evaluator's (the derivation's own loss, :class:`symbolic.evaluate.Reference`)
    within the check's tolerance; a difference is a loss mismatch (the report is wrong).
    Raises DomainError when the loss is not finite at the check points.
    """
    try:
        return _verify(d, loss, loss_and_grad, data, seed, against_reference)
    except (ValueError, DomainError) as exc:
        raise DomainError(f"{d.spec.source or d.spec.name}: cannot check the gradients: {exc} "
                          f"(a formula leaves its domain or overflows at random parameters and "
                          f"check inputs); keep logs and square roots of positive quantities, "
                          f"e.g. log(1 + square(u)) or softplus") from None


def _verify(d: Derivation, loss: LossFn, loss_and_grad: LossGradFn, data: Batch | None,
            seed: int, against_reference: bool) -> CheckReport:
    X, Y = check_data(d, seed) if data is None else data
    X = np.asarray(X, dtype=np.float64)
    ref = Reference(d)
    shapes = {p.name: p.shape for p in d.spec.params}
    fans = fan_in(d)

    def usable(point: Params) -> bool:
        return not any(near_kink(v) for v in ref.kink_values(point, X, Y))

    points: list[Params] = []
    draw = 0
    for k in range(2):
        while True:
            point = random_point(shapes, seed=seed * 1000 + 17 * k + draw, fan_in=fans)
            draw += 1
            if usable(point) or draw > MAX_REDRAWS:
                break
        points.append(point)
    points.append(_burned_in(d, loss_and_grad, X, Y, seed, usable))

    def masks(point: Params) -> np.ndarray:
        return ref.kink_masks(point, X, Y)

    report = check_gradients(lambda p: loss(p, X, Y), lambda p: loss_and_grad(p, X, Y), points,
                             kink_masks=masks if d.kinks else None, seed=seed)
    if against_reference:
        report.loss_mismatches.extend(_reference_mismatches(ref, loss, points, X, Y, report))
    if draw > MAX_REDRAWS:
        report.notes.append("could not draw a point away from every kink; kink-crossed pairs "
                            "were skipped")
    if d.kinks:
        report.notes.append(f"kinks ({', '.join(sorted({k.function for k in d.kinks}))}) avoided: "
                            "points within 1e-3 of a kink are redrawn, crossing pairs skipped")
    return report


def _reference_mismatches(ref: Reference, loss: LossFn, points: list[Params], X: np.ndarray,
                          Y: np.ndarray, report: CheckReport) -> list[str]:
    """The points where ``loss`` differs from the reference evaluator's loss by more than the
    check's tolerance (``atol_scale·max(1, |L|) + rtol·max(|a|, |b|)``)."""
    found = []
    for i, point in enumerate(points):
        got = float(loss({k: v.copy() for k, v in point.items()}, X, Y))
        want = float(ref.loss(point, X, Y))
        if not agree(got, want, report.rtol, report.atol_scale * max(1.0, abs(want))):
            found.append(f"point {i}: the loss is {got:.17g} but the derivation's (reference "
                         f"evaluator) is {want:.17g}; the code computes a different loss")
    return found


def _burned_in(d: Derivation, loss_and_grad: LossGradFn, X: np.ndarray, Y: np.ndarray,
               seed: int, usable: Callable[[Params], bool]) -> Params:
    """The spec's initial point after a few small gradient steps on the check data."""
    point = replace_zero_tensors(init_point(d, seed), seed=seed + 99, fan_in=fan_in(d))
    lr = min(d.spec.train.lr, 0.05)
    for _ in range(BURN_IN_STEPS):
        _, grads = loss_and_grad(point, X, Y)
        candidate = {k: v - lr * np.asarray(grads[k]) for k, v in point.items()}
        if not all(np.all(np.isfinite(v)) for v in candidate.values()):
            break
        point = candidate
    if usable(point):
        return point
    return random_point({k: v.shape for k, v in point.items()}, seed=seed + 4242,
                        fan_in=fan_in(d))


def verify_reference(d: Derivation, *, data: Batch | None = None, seed: int = 0) -> CheckReport:
    """Check the reference evaluator's gradients (the derivation itself)."""
    ref = Reference(d)
    return verify(d, ref.loss, ref.loss_and_grad, data=data, seed=seed)

