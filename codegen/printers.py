"""Printers: per-sample SymPy expressions → batched NumPy/Numba source, and → unicode formulas.

:class:`NumbaPrinter` prints the **batched** form of a per-sample expression. Conventions
(one for the whole module):

* a per-sample vector (n,) of a batched value is a (B, n) array (rows are samples);
* a per-sample scalar of a batched value is a (B, 1) column, so NumPy broadcasting between
  per-sample scalars and vectors is always right;
* unbatched values (parameters, values computed from parameters only) keep their own shape;
* float constants are cast to the working dtype with ``_F(...)`` (``_F = X.dtype.type``):
  Numba types ``float32_array * 0.5`` as float64, so a bare float literal would silently
  promote a float32 model to float64. Integer literals keep the array's dtype and stay bare.

Dispatch is SymPy's ``_print_<Class>``; ``strict`` stays on, so an expression the printer does
not know raises instead of emitting something that merely looks like code.

:class:`FormulaPrinter` prints the same expressions as one line of plain unicode math for the
comment above each block (``δ_z1 = δ_h ⊙ step(z1)``).
"""

from __future__ import annotations

from typing import Mapping

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from symbolic.derive import shape_of
from symbolic.functions import (
    Broadcast, Clip, Elu, Gelu, Huber, LeakyRelu, LogSumExp, MatProd, Outer, Relu, Sigmoid, Softmax,
    Softplus, Step, Transposed, UserFunction, gelu_body,
)

Shape = tuple[int, ...]

_INFIX = (MatProd,)
"""Nodes printed as an infix expression (``a @ b``): parenthesized inside * / ** and postfixes."""


def _strip_outer(text: str) -> str:
    """``(a + b)`` → ``a + b`` when the outer parentheses enclose the whole text."""
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text
        text = text[1:-1]
    return text


class CodegenError(Exception):
    """The derivation contains something the code generator cannot print (a bug or a gap)."""


def _num(value: sp.Expr) -> str:
    """A float constant in the shortest repr that round-trips (deterministic)."""
    return repr(float(value))


class NumbaPrinter(NumPyPrinter):
    """Batched NumPy/Numba code for per-sample expressions (see the module docstring).

    ``shapes`` gives the per-sample shape of every symbol, ``batched`` the symbols that differ
    from sample to sample, ``names`` how a symbol is spelled in code (default: its name), and
    ``lse`` maps an argument u to the name holding logsumexp(u), so softmax(u) is printed as
    ``np.exp(u - logsumexp_u)`` and shares the exponentials' stable shift with the loss.
    """

    _module = "np"
    printmethod = "_symgrad_numba"
    _default_settings = {**NumPyPrinter._default_settings, "strict": True,
                         "fully_qualified_modules": True}

    def __init__(self, shapes: Mapping[sp.Symbol, Shape], batched: set[sp.Symbol],
                 names: Mapping[sp.Symbol, str] | None = None,
                 lse: Mapping[sp.Expr, str] | None = None):
        super().__init__()
        self.shapes = dict(shapes)
        self.batched_symbols = set(batched)
        self.names = dict(names or {})
        self.lse = dict(lse or {})
        self.helpers: set[str] = set()

    # ------------------------------------------------------------------ facts
    def shape(self, expr: sp.Expr) -> Shape:
        return shape_of(expr, self.shapes)

    def is_batched(self, expr: sp.Expr) -> bool:
        return bool(expr.free_symbols & self.batched_symbols)

    def np(self, name: str) -> str:
        return self._module_format(f"np.{name}")

    def helper(self, name: str) -> str:
        self.helpers.add(name)
        return name

    def atom(self, expr: sp.Expr) -> str:
        """``expr`` printed so that a postfix (``.T``, ``@``) or a unary minus binds to all of it."""
        text = self._print(expr)
        if isinstance(expr, _INFIX) and " @ " in text:
            return f"({text})"
        if expr.is_Symbol or expr.is_Function or (expr.is_Integer and expr >= 0):
            return text
        return f"({text})"

    def parenthesize(self, item, level, strict=False):
        if isinstance(item, _INFIX) and level >= PRECEDENCE["Mul"]:
            text = self._print(item)
            return f"({text})" if " @ " in text else text
        return super().parenthesize(item, level, strict=strict)

    def statement(self, expr: sp.Expr) -> str:
        """``expr`` as the right-hand side of an assignment (no redundant outer parentheses)."""
        return _strip_outer(self._print(expr))

    # ---------------------------------------------------------------- numbers
    def _print_Integer(self, expr):
        return str(int(expr))

    def _print_Rational(self, expr):
        return f"_F({_num(expr)})"

    def _print_Float(self, expr):
        return f"_F({_num(expr)})"

    def _print_NumberSymbol(self, expr):
        return f"_F({_num(expr)})"

    _print_Pi = _print_Exp1 = _print_NumberSymbol

    def _print_Half(self, expr):
        return "_F(0.5)"

    def _print_Symbol(self, expr):
        return self.names.get(expr, expr.name)

    # ------------------------------------------------------------ arithmetic
    def _print_Mul(self, expr):
        if expr.is_number:
            return f"_F({_num(expr)})"
        coeff, rest = expr.as_coeff_Mul()
        factors = sp.Mul.make_args(rest)
        numer, denom = [], []
        for f in factors:
            if f.is_Pow and f.exp.is_Rational and f.exp.is_negative:
                denom.append(sp.Pow(f.base, -f.exp))
            else:
                numer.append(f)
        # step(z) may be printed as the boolean (z > 0) only next to a float factor: bool × float
        # keeps the float dtype, while bool alone (or bool × int) would not be a float array.
        as_bool = any(not isinstance(f, Step) for f in numer)
        parts = []
        for f in numer:
            if isinstance(f, Step) and as_bool:
                parts.append(f"({self.parenthesize(f.args[0], PRECEDENCE['Relational'])} > 0)")
            else:
                parts.append(self.parenthesize(f, PRECEDENCE["Mul"], strict=False))
        sign = ""
        if coeff == -1:
            sign = "-"
        elif coeff.is_Integer and coeff != 1:
            parts.insert(0, self.parenthesize(coeff, PRECEDENCE["Mul"]))
        elif coeff.is_Rational and coeff.q != 1 and abs(coeff.p) == 1:
            sign = "-" if coeff.p < 0 else ""
            denom.insert(0, sp.Integer(coeff.q))
        elif coeff != 1:
            parts.insert(0, self._print(coeff))
        text = "*".join(parts) if parts else "1"
        if denom:
            if len(denom) == 1 and (denom[0].is_Atom or denom[0].is_Function):
                text += f"/{self.parenthesize(denom[0], PRECEDENCE['Pow'], strict=False)}"
            else:
                text += "/(" + "*".join(self.parenthesize(d, PRECEDENCE["Mul"], strict=False)
                                        for d in denom) + ")"
        return sign + text

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        if exp == sp.S.Half:
            return f"{self.np('sqrt')}({self._print(base)})"
        if exp == -sp.S.Half:
            return f"1/{self.np('sqrt')}({self._print(base)})"
        if exp.is_Integer and exp < 0:
            inner = base if exp == -1 else sp.Pow(base, -exp, evaluate=False)
            return f"1/{self.parenthesize(inner, PRECEDENCE['Pow'], strict=False)}"
        prec = PRECEDENCE["Pow"]
        return (f"{self.parenthesize(base, prec, strict=True)}"
                f"**{self.parenthesize(exp, prec, strict=True)}")

    # ------------------------------------------------ elementwise functions
    def _unary(self, name: str, expr) -> str:
        return f"{self.np(name)}({self._print(expr.args[0])})"

    def _print_exp(self, expr):
        return self._unary("exp", expr)

    def _print_log(self, expr):
        return self._unary("log", expr)

    def _print_sin(self, expr):
        return self._unary("sin", expr)

    def _print_cos(self, expr):
        return self._unary("cos", expr)

    def _print_tanh(self, expr):
        return self._unary("tanh", expr)

    def _print_Abs(self, expr):
        return self._unary("abs", expr)

    def _print_sign(self, expr):
        return self._unary("sign", expr)

    def _print_Sigmoid(self, expr):
        # 1/(1 + e^{−z}): e^{−z} overflows to inf for z ≪ 0, giving exactly 0, never nan
        return f"(1/(1 + {self.np('exp')}({self._print(-expr.args[0])})))"

    def _print_Relu(self, expr):
        return f"{self.np('maximum')}({self._print(expr.args[0])}, _F(0))"

    def _print_Step(self, expr):
        # relu'(z): 1 where z > 0, else 0 (relu'(0) = 0; never Heaviside(0) = 1/2)
        z = self._print(expr.args[0])
        return f"{self.np('where')}({z} > 0, _F(1), _F(0))"

    def _print_LeakyRelu(self, expr):
        z, alpha = expr.args
        zs = self._print(z)
        return f"{self.np('where')}({zs} > 0, {zs}, {self._print(alpha * z)})"

    def _print_Softplus(self, expr):
        # max(z, 0) + log1p(e^{−|z|}): no overflow for large |z|
        z = self._print(expr.args[0])
        return (f"({self.np('maximum')}({z}, _F(0)) + "
                f"{self.np('log1p')}({self.np('exp')}(-{self.np('abs')}({z}))))")

    def _print_Elu(self, expr):
        z = self._print(expr.args[0])
        return (f"{self.np('where')}({z} > 0, {z}, "
                f"{self.np('expm1')}({self.np('minimum')}({z}, _F(0))))")

    def _print_Gelu(self, expr):
        return f"({self._print(gelu_body(expr.args[0]))})"

    def _print_Clip(self, expr):
        u, lo, hi = (self._print(a) for a in expr.args)
        return f"{self.np('minimum')}({self.np('maximum')}({u}, {lo}), {hi})"

    def _print_Huber(self, expr):
        r, d = expr.args
        a = f"{self.np('abs')}({self._print(r)})"
        return (f"{self.np('where')}({a} <= {self._print(d)}, {self._print(r**2 / 2)}, "
                f"{self._print(d)}*({a} - {self._print(d / 2)}))")

    def _print_UserFunction(self, expr):
        return f"({self._print(expr.expand_body())})"

    def _print_Function(self, expr):
        raise CodegenError(f"the code printer has no rule for {type(expr).__name__}: {expr}")

    _print_Heaviside = _print_Max = _print_Min = _print_Piecewise = _print_Function

    # ------------------------------------------------------ tensor operations
    def _transpose(self, expr: sp.Expr) -> str:
        """Aᵀ of an unbatched matrix; Aᵀᵀ is printed as A (no transposed copy)."""
        if isinstance(expr, Transposed):
            return self._print(expr.args[0])
        return f"{self.atom(expr)}.T"

    def _print_Transposed(self, expr):
        if self.is_batched(expr):
            raise CodegenError(f"a per-sample matrix cannot be batched: {expr}")
        return self._transpose(expr.args[0])

    def _print_MatProd(self, expr):
        a, b = expr.args
        sa, sb = self.shape(a), self.shape(b)
        ba, bb = self.is_batched(a), self.is_batched(b)
        if not ba and not bb:
            return f"{self.atom(a)} @ {self.atom(b)}"
        if len(sa) == 2 and len(sb) == 1 and bb and not ba:  # W x  →  X Wᵀ (rows are samples)
            return f"{self.atom(b)} @ {self._transpose(a)}"
        if len(sa) == 1 and len(sb) == 2 and ba and not bb:  # xᵀ W  →  X W
            return f"{self.atom(a)} @ {self.atom(b)}"
        if len(sa) == 1 and len(sb) == 1:                    # u·v per sample → (B, 1)
            if ba and bb:
                return f"{self.helper('_rowdot')}({self._print(a)}, {self._print(b)})"
            vec, w = (a, b) if ba else (b, a)
            return f"{self.helper('_col')}({self.atom(vec)} @ {self.atom(w)})"
        raise CodegenError(f"cannot batch the product {expr} (shapes {sa}, {sb})")

    def _print_Outer(self, expr):
        if self.is_batched(expr):
            raise CodegenError(f"a per-sample matrix cannot be batched: {expr}")
        a, b = expr.args
        return f"{self.np('outer')}({self._print(a)}, {self._print(b)})"

    def _print_SumAll(self, expr):
        (u,) = expr.args
        if not self.is_batched(u):
            return f"{self.np('sum')}({self._print(u)})"
        if self.shape(u) == ():
            return self._print(u)
        return f"{self.helper('_rowsum')}({self._print(u)})"

    def _print_LogSumExp(self, expr):
        (u,) = expr.args
        name = "_logsumexp" if self.is_batched(u) else "_logsumexp1"
        return f"{self.helper(name)}({self._print(u)})"

    def _print_Softmax(self, expr):
        (u,) = expr.args
        if u in self.lse:  # softmax(u) = exp(u − logsumexp(u)): shares the loss's stable shift
            return f"{self.np('exp')}({self.atom(u)} - {self.lse[u]})"
        name = "_softmax" if self.is_batched(u) else "_softmax1"
        return f"{self.helper(name)}({self._print(u)})"

    def _print_Pick(self, expr):
        z, y = expr.args
        if self.is_batched(z):
            return f"{self.helper('_pick')}({self._print(z)}, {self._print(y)})"
        return f"{self.helper('_col')}({self.atom(z)}[{self._print(y)}])"

    def _print_OneHot(self, expr):
        y, c = expr.args
        return f"{self.helper('_onehot')}({self._print(y)}, {int(c)}, X)"

    def _print_Broadcast(self, expr):
        s, *dims = expr.args
        shape = tuple(int(d) for d in dims)
        if self.is_batched(s):
            if len(shape) != 1:
                raise CodegenError(f"cannot batch the per-sample matrix {expr}")
            return f"{self.helper('_spread')}({self._print(s)}, {shape[0]})"
        return f"{self.np('full')}({shape!r}, {self._print(s)})"


# ----------------------------------------------------------------------------- formulas

_SUPERSCRIPTS = {2: "²", 3: "³", 4: "⁴"}
_NAMES = {Sigmoid: "σ", Relu: "relu", Step: "step", Softplus: "softplus", Elu: "elu",
          Gelu: "gelu", LeakyRelu: "leaky_relu", Clip: "clip", Huber: "huber",
          Softmax: "softmax", LogSumExp: "logsumexp"}


def display_name(name: str) -> str:
    """How a value is named in formulas: delta_z1 → δ_z1, grad_W1 → ∂L/∂W1."""
    if name.startswith("delta_"):
        return "δ_" + name[len("delta_"):]
    if name.startswith("grad_"):
        return "∂L/∂" + name[len("grad_"):]
    return name


class FormulaPrinter(StrPrinter):
    """One line of plain unicode math: W1 x + b1, δ_h ⊙ step(z1), δ_z1 xᵀ, W2ᵀ δ_z."""

    def __init__(self, shapes: Mapping[sp.Symbol, Shape]):
        super().__init__({"order": None})
        self.shapes = dict(shapes)

    def doprint(self, expr) -> str:
        return super().doprint(expr).replace("-", "−")

    def _print_Symbol(self, expr):
        return display_name(expr.name)

    def _print_Float(self, expr):
        return _num(expr)

    def _wrap(self, expr) -> str:
        text = self._print(expr)
        if isinstance(expr, (MatProd, Outer, Broadcast)):
            return f"({text})"
        return text if expr.is_Atom or expr.is_Function else f"({text})"

    def _print_Mul(self, expr):
        coeff, rest = expr.as_coeff_Mul()
        numer, denom = [], []
        for f in sp.Mul.make_args(rest):
            if f.is_Pow and f.exp.is_Rational and f.exp.is_negative:
                denom.append(sp.Pow(f.base, -f.exp))
            else:
                numer.append(f)
        tensors = sum(1 for f in numer if shape_of(f, self.shapes) != ())
        sep = " ⊙ " if tensors >= 2 else "·"
        parts = [self.parenthesize(f, PRECEDENCE["Mul"]) for f in numer]
        sign = ""
        if coeff == -1:
            sign = "-"
        elif coeff.is_Rational and coeff.q != 1 and abs(coeff.p) == 1:
            sign = "-" if coeff.p < 0 else ""
            denom.insert(0, sp.Integer(coeff.q))
        elif coeff != 1:
            parts.insert(0, self.parenthesize(coeff, PRECEDENCE["Mul"]))
        text = sep.join(parts) if parts else "1"
        if denom:
            text += "/" + "·".join(self.parenthesize(d, PRECEDENCE["Pow"]) for d in denom)
        return sign + text

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        if exp == sp.S.Half:
            return f"√{self._wrap(base)}"
        if exp.is_Integer and int(exp) in _SUPERSCRIPTS:
            return self.parenthesize(base, PRECEDENCE["Pow"], strict=True) + \
                _SUPERSCRIPTS[int(exp)]
        if exp.is_Integer and exp < 0:
            return f"1/{self._print(sp.Pow(base, -exp, evaluate=False))}"
        return f"{self.parenthesize(base, PRECEDENCE['Pow'], strict=True)}^" \
               f"{self.parenthesize(exp, PRECEDENCE['Pow'], strict=True)}"

    def _print_Function(self, expr):
        name = _NAMES.get(type(expr), type(expr).__name__.lower())
        if isinstance(expr, UserFunction):
            name = type(expr).__name__
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def _print_MatProd(self, expr):
        a, b = expr.args
        if len(shape_of(a, self.shapes)) == 1 and len(shape_of(b, self.shapes)) == 1:
            return f"{self._wrap(a)}·{self._wrap(b)}"
        return f"{self._wrap(a)} {self._wrap(b)}"

    def _print_Transposed(self, expr):
        return f"{self._wrap(expr.args[0])}ᵀ"

    def _print_Outer(self, expr):
        a, b = expr.args
        return f"{self._wrap(a)} {self._wrap(b)}ᵀ"

    def _print_SumAll(self, expr):
        return f"Σ{self._wrap(expr.args[0])}"

    def _print_Pick(self, expr):
        z, y = expr.args
        return f"{self._wrap(z)}[{self._print(y)}]"

    def _print_OneHot(self, expr):
        return f"onehot({self._print(expr.args[0])})"

    def _print_Broadcast(self, expr):
        return f"{self._wrap(expr.args[0])}·1"

    def _print_UserFunction(self, expr):
        return self._print_Function(expr)

