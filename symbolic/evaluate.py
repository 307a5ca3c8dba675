"""Reference evaluator: the derived expressions computed in float64 NumPy, one sample at a time.

It follows the spec's semantics literally (per-sample vectors, the batch loss a mean of per-sample
losses) and shares no code with the generated modules, so the two check each other.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import sympy as sp

from .derive import LOSS, Derivation
from .functions import ELEMENTWISE_SYMPY, Elementwise, TensorOp, UserFunction

Params = dict[str, np.ndarray]


class DomainError(ArithmeticError):
    """A formula produced NaN or infinity for some sample (e.g. log of a negative number)."""


def evaluate(expr: sp.Expr, env: Mapping[sp.Symbol, object], memo: dict | None = None):
    """The value of ``expr`` for one sample, given values of its symbols (NumPy semantics)."""
    memo = {} if memo is None else memo
    if expr in memo:
        return memo[expr]
    if expr.is_Symbol:
        value = env[expr]
    elif isinstance(expr, UserFunction):
        value = evaluate(expr.expand_body(), env, memo)
    elif isinstance(expr, (Elementwise, TensorOp)):
        value = type(expr).numpy(*(evaluate(a, env, memo) for a in expr.args))
    elif expr.is_number:
        value = float(expr)
    elif expr.is_Add:
        value = sum(evaluate(a, env, memo) for a in expr.args)
    elif expr.is_Mul:
        value = math.prod((evaluate(a, env, memo) for a in expr.args), start=1.0)
    elif expr.is_Pow:
        base = evaluate(expr.args[0], env, memo)
        exponent = evaluate(expr.args[1], env, memo)
        value = np.power(np.asarray(base, dtype=np.float64), exponent)
    elif expr.func in ELEMENTWISE_SYMPY:
        value = ELEMENTWISE_SYMPY[expr.func](*(evaluate(a, env, memo) for a in expr.args))
    else:
        raise TypeError(f"the reference evaluator has no rule for {type(expr).__name__}")
    memo[expr] = value
    return value


class Reference:
    """Loss, gradients and predictions of a derivation, straight from its SymPy expressions."""

    def __init__(self, derivation: Derivation):
        self.d = derivation
        self.sym = {name: v.symbol for name, v in derivation.values.items()}

    def _env(self, params: Mapping[str, np.ndarray], x: np.ndarray, y) -> dict:
        spec = self.d.spec
        env: dict = {self.sym[p.name]: np.asarray(params[p.name], dtype=np.float64)
                     for p in spec.params}
        env[self.sym[spec.input_name]] = _as_sample(x, spec.input_shape)
        env[self.sym[spec.target_name]] = (int(y) if spec.classes else
                                           _as_sample(y, spec.target_shape))
        return env

    def _forward(self, env: dict, memo: dict, upto: str | None = None) -> None:
        for step in self.d.forward:
            value = evaluate(step.expr, env, memo)
            env[self.sym[step.name]] = np.broadcast_to(value, step.shape) if step.shape else value
            if step.name == upto:
                return

    def sample(self, params: Mapping[str, np.ndarray], x, y) -> tuple[float, Params]:
        """The per-sample loss ℓ and ∂ℓ/∂θ for every parameter."""
        env = self._env(params, x, y)
        memo: dict = {}
        with np.errstate(all="ignore"):
            self._forward(env, memo)
            grads = {}
            for step in self.d.backward:
                value = np.broadcast_to(evaluate(step.expr, env, memo), step.shape)
                env[self.sym[step.name]] = value
                if step.role == "grad":
                    grads[step.of] = np.array(value, dtype=np.float64)
        return float(env[self.sym[LOSS]]), grads

    def loss_and_grad(self, params: Mapping[str, np.ndarray], X, Y) -> tuple[float, Params]:
        """Batch loss (mean over samples + L2) and its gradient."""
        X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y)
        n = len(X)
        total = 0.0
        grads = {p.name: np.zeros(p.shape) for p in self.d.spec.params}
        for i in range(n):
            loss, g = self.sample(params, X[i], Y[i])
            _require_finite(loss, i, self.d)
            total += loss
            for name in grads:
                grads[name] += g[name]
        total /= n
        for name in grads:
            grads[name] /= n
        for name in self.d.l2_params:
            theta = np.asarray(params[name], dtype=np.float64)
            total += 0.5 * self.d.spec.l2 * float(np.sum(theta * theta))
            grads[name] += self.d.spec.l2 * theta
        return total, grads

    def loss(self, params: Mapping[str, np.ndarray], X, Y) -> float:
        X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y)
        total = 0.0
        for i in range(len(X)):
            env = self._env(params, X[i], Y[i])
            with np.errstate(all="ignore"):
                self._forward(env, {})
            loss = float(env[self.sym[LOSS]])
            _require_finite(loss, i, self.d)
            total += loss
        total /= len(X)
        for name in self.d.l2_params:
            theta = np.asarray(params[name], dtype=np.float64)
            total += 0.5 * self.d.spec.l2 * float(np.sum(theta * theta))
        return total

    def forward(self, params: Mapping[str, np.ndarray], X) -> np.ndarray:
        """Predictions (the last model line) for every row of X."""
        spec = self.d.spec
        out = []
        dummy = 0 if spec.classes else np.zeros(spec.target_shape)
        for x in np.asarray(X, dtype=np.float64):
            env = self._env(params, x, dummy)
            with np.errstate(all="ignore"):
                self._forward(env, {}, upto=self.d.prediction)
            out.append(np.asarray(env[self.sym[self.d.prediction]], dtype=np.float64))
        return np.array(out)

    def kink_values(self, params: Mapping[str, np.ndarray], X, Y) -> list[np.ndarray]:
        """For every kink, its argument minus the kink point, for every sample (rows)."""
        X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y)
        columns: list[list[np.ndarray]] = [[] for k in self.d.kinks for _ in k.at]
        for i in range(len(X)):
            env = self._env(params, X[i], Y[i])
            memo: dict = {}
            with np.errstate(all="ignore"):
                self._forward(env, memo)
                j = 0
                for kink in self.d.kinks:
                    arg = np.asarray(evaluate(kink.arg, env, memo), dtype=np.float64)
                    for at in kink.at:
                        columns[j].append(np.ravel(arg - float(at)))
                        j += 1
        return [np.array(c) for c in columns]

    def kink_masks(self, params: Mapping[str, np.ndarray], X, Y) -> np.ndarray:
        """Which side of every kink each argument lies on: one boolean vector."""
        parts = [np.concatenate([(v > 0).ravel(), (v < 0).ravel()])
                 for v in self.kink_values(params, X, Y)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _as_sample(value, shape: tuple[int, ...]) -> np.ndarray | float:
    arr = np.asarray(value, dtype=np.float64)
    if shape == ():
        return float(arr.reshape(()))
    return arr.reshape(shape)


def _require_finite(loss: float, index: int, d: Derivation) -> None:
    if not math.isfinite(loss):
        raise DomainError(f"the loss of sample {index} is {loss} (a formula left its domain, "
                          f"e.g. log or sqrt of a negative number, or overflowed); check the "
                          f"data against the formulas in {d.spec.source or d.spec.name}")
