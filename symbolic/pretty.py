"""Plain-text printing of derivation expressions for terminals (``symgrad derive``)."""

from __future__ import annotations

import sympy as sp
from sympy.printing.str import StrPrinter

from .derive import Derivation, Step


class FormulaPrinter(StrPrinter):
    """Prints tensor expressions the way a spec writes them: ``W1 @ x``, ``W2.T``, ``*`` elementwise."""

    def _print_MatProd(self, expr):
        a, b = (self.parenthesize(arg, 60) for arg in expr.args)
        return f"{a} @ {b}"

    def _print_Transposed(self, expr):
        return f"{self.parenthesize(expr.args[0], 999)}.T"

    def _print_Outer(self, expr):
        return f"outer({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Pick(self, expr):
        return f"{self.parenthesize(expr.args[0], 999)}[{self._print(expr.args[1])}]"

    def _print_Function(self, expr):
        name = _NAMES.get(type(expr).__name__, type(expr).__name__)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"


_NAMES = {"SumAll": "sum", "Softmax": "softmax", "LogSumExp": "logsumexp", "Sigmoid": "sigmoid",
          "Relu": "relu", "Step": "step", "LeakyRelu": "leaky_relu", "Softplus": "softplus",
          "Elu": "elu", "Gelu": "gelu", "Clip": "clip", "Huber": "huber", "OneHot": "onehot",
          "Broadcast": "broadcast", "Abs": "abs"}


def formula(expr: sp.Expr) -> str:
    return FormulaPrinter().doprint(expr)


def describe(d: Derivation, *, expanded: bool = False) -> str:
    """The derivation as text: forward pass, backward pass, batch gradients, simplifications."""
    lines = [f"model {d.spec.name} ({d.task}); per-sample loss ℓ, batch loss "
             f"C = mean_i ℓ_i" + (f" + ({d.spec.l2:g}/2)·Σ‖θ‖² over {', '.join(d.l2_params)}"
                                  if d.l2_params else ""), "", "forward pass:"]
    lines += [_line(d, s) for s in d.forward]
    lines += ["", "backward pass (δ_v = ∂ℓ/∂v for one sample):"]
    lines += [_line(d, s) for s in d.backward]
    lines += ["", "batch gradients:"]
    for name, step in d.grads.items():
        l2 = f" + {d.spec.l2:g}·{name}" if name in d.l2_params else ""
        lines.append(f"  ∂C/∂{name} = mean over samples of {step.name}{l2}")
    if expanded:
        lines += ["", "expanded per-sample gradients:"]
        lines += [f"  ∂ℓ/∂{name} = {formula(d.expanded_grad(name))}" for name in d.grads]
    if d.rules:
        lines += ["", "simplifications and stable forms used:"]
        lines += [f"  {r.result}: {r.reason}" for r in d.rules]
    return "\n".join(lines) + "\n"


def _line(d: Derivation, step: Step) -> str:
    shape = "×".join(map(str, step.shape)) or "scalar"
    return f"  {step.name} = {formula(step.expr)}    [{shape}]"
