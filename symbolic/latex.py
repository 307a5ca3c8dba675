r"""The derivation as a document a person reads: LaTeX (article + amsmath), Markdown, notebooks.

Every formula is printed by :class:`DerivationLatexPrinter` from the very SymPy expressions the
code generator prints, in the seed documents' notation: W⁽ˡ⁾, b⁽ˡ⁾, z⁽ˡ⁾, δ⁽ˡ⁾ = ∂ℓ/∂z⁽ˡ⁾, ⊙ for
the elementwise product, ℓ the loss of one sample and C the batch cost. Each equation of a step
carries ``\tag{k}`` with the number :func:`symbolic.notation.equation_tags` gives it, the number
the generated code writes above the block that computes it.

The document builders return text; :func:`write_latex`, :func:`write_markdown` write files
atomically (a temporary file, then ``os.replace``) and raise :class:`DocumentError` with one
line that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import sympy as sp
from sympy.printing.latex import LatexPrinter

from .derive import Derivation, Step
from .functions import (
    Clip, Elementwise, Elu, Gelu, Huber, LeakyRelu, MatProd, Outer, Relu, Softplus, TensorOp,
    Transposed, UserFunction,
)
from .functions import Step as StepFn
from .notation import Notation, equation_tags

if TYPE_CHECKING:
    from .check import CheckReport

__all__ = [
    "BatchGradient", "DerivationLatexPrinter", "DocumentError", "Equation", "batch_gradients",
    "backward_equations", "derivation_markdown_math", "equation_tags", "expanded_gradients",
    "forward_equations", "latex_document", "markdown_document", "write_latex", "write_markdown",
]


class DocumentError(Exception):
    """A document could not be written or compiled; the message is one line with the fix."""


# ============================================================================ the printer

_SYMPY_FUNCTIONS = (sp.exp, sp.log, sp.tanh, sp.sin, sp.cos, sp.Abs, sp.sign)
"""SymPy's own functions that may appear in a derivation; LatexPrinter prints them well."""


def paren(text: str) -> str:
    """``(text)``; with ``\\left( \\right)`` only when the content is tall (fractions, sums)."""
    if any(tall in text for tall in (r"\frac", r"\sum", r"\left", r"\sqrt", r"\mathbf{e}")):
        return rf"\left({text}\right)"
    return f"({text})"


class DerivationLatexPrinter(LatexPrinter):
    r"""LaTeX for derivation expressions: juxtaposed matrix products, ᵀ, ⊙, σ, softmax, z_y.

    Strict: an operation without a ``_print_<Class>`` method here raises ``TypeError`` instead of
    being printed as a guess. Settings beyond LatexPrinter's (attributes, not ``settings``):

    - ``notation``: the names of the tensors (:class:`symbolic.notation.Notation`);
    - ``shapes``: symbol → shape, to tell ⊙ (two tensors) from scaling by a scalar;
    - ``sample``: an index such as ``"i"``: batched tensors are printed as x_i (sample i);
    - ``element``: an index such as ``"j"``: vectors are printed entry by entry (x_{ij}), vector
      products as Σ_k, and σ written out, for the fully expanded scalar formulas.
    """

    printmethod = "_symgrad_latex"

    def __init__(self, notation: Notation, *, sample: str = "", element: str = "",
                 expanded: bool = False,
                 extra_names: dict[sp.Symbol, str] | None = None,
                 extra_shapes: dict[sp.Symbol, tuple] | None = None, sizes: dict | None = None):
        super().__init__({"mul_symbol": None})
        self.notation = notation
        self.d = notation.d
        self.shapes: dict[sp.Symbol, tuple] = {v.symbol: v.shape for v in self.d.values.values()}
        self.shapes.update(extra_shapes or {})
        self.by_symbol = {v.symbol: v for v in self.d.values.values()}
        self.extra_names = dict(extra_names or {})
        self.sample = sample
        self.element = element
        self.expanded = expanded or bool(element)
        self.sizes = sizes or {}

    # ---------------------------------------------------------------- helpers
    def shape(self, expr: sp.Expr) -> tuple:
        if self.expanded:
            return ()
        from .derive import shape_of

        return shape_of(expr, self.shapes)

    def _name(self, sym: sp.Symbol, *, transposed: bool = False, index: str | None = None) -> str:
        if sym in self.extra_names:
            text = self.extra_names[sym]
            return paren(text) + r"^{\top}" if transposed and "^" in text else (
                text + r"^{\top}" if transposed else text)
        value = self.by_symbol.get(sym)
        if value is None:
            raise TypeError(f"no math name for the symbol {sym}")
        parts = []
        if self.sample and value.batched:
            parts.append(self.sample)
        if index is None:
            index = self.element if self.element and value.shape else ""
        if index:
            parts.append(index)
        joined = "".join(parts) if all(len(p) == 1 for p in parts) else ",".join(parts)
        return self.notation.latex(value.name, joined, transposed=transposed)

    def _arg(self, expr: sp.Expr) -> str:
        return paren(self._print(expr))

    def _apply(self, name: str, *args: sp.Expr, exp: str | None = None) -> str:
        inner = ", ".join(self._print(a) for a in args)
        out = f"{name}{paren(inner)}"
        return f"{out}^{{{exp}}}" if exp else out

    def _wrap(self, expr: sp.Expr) -> str:
        """A factor of a product: parenthesised when it is a sum or a product of matrices."""
        text = self._print(expr)
        if expr.is_Add or isinstance(expr, MatProd) or (expr.is_Mul and
                                                          expr.could_extract_minus_sign()):
            return paren(text)
        return text

    # ---------------------------------------------------------------- atoms
    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        return self._name(expr)

    def _print_Pi(self, expr, exp=None):
        return r"\pi"

    def _print_Function(self, expr, exp=None):
        # SymPy skips the methods of a renamed Function subclass, so the spec's own functions
        # (classes named after them, subclassing UserFunction) arrive here
        if isinstance(expr, UserFunction):
            return self._print_UserFunction(expr, exp)
        if isinstance(expr, (Elementwise, TensorOp)) or expr.func not in _SYMPY_FUNCTIONS:
            raise TypeError(f"the LaTeX printer has no rule for {type(expr).__name__}")
        if expr.func in (sp.tanh, sp.sin, sp.cos, sp.log):
            name = "\\" + expr.func.__name__
            return f"{name}^{{{exp}}}{self._arg(expr.args[0])}" if exp else \
                f"{name}{self._arg(expr.args[0])}"
        return super()._print_Function(expr, exp)

    # ---------------------------------------------------------------- arithmetic
    def _print_Add(self, expr, order=None):
        terms = list(self._as_ordered_terms(expr, order=order))
        # ŷ − y and W x + b read better than −y + ŷ and b + W x: positive terms first, products
        # of matrices first among them (a stable sort keeps SymPy's order otherwise)
        terms.sort(key=lambda t: (t.could_extract_minus_sign(),
                                  not any(isinstance(a, MatProd) for a in sp.preorder_traversal(t))))
        tex = ""
        for i, term in enumerate(terms):
            if i == 0:
                if term.could_extract_minus_sign():
                    tex += "-"
                    term = -term
            elif term.could_extract_minus_sign():
                tex += " - "
                term = -term
            else:
                tex += " + "
            term_tex = self._print(term)
            if self._needs_add_brackets(term):
                term_tex = paren(term_tex)
            tex += term_tex
        return tex

    def _print_Mul(self, expr):
        if self.expanded:
            return self._mul_expanded(expr)
        tensors = [a for a in expr.args if self.shape(a) != ()]
        # the seed's order: the back-propagated signal first, then f'(z): ((Wᵀ δ) ⊙ f'(z))
        tensors.sort(key=lambda a: not (isinstance(a, MatProd) or self._is_signal(a)))
        if len(tensors) < 2:
            return self._mul_scalar(expr)
        scalars = [a for a in expr.args if self.shape(a) == ()]
        coeff = sp.Mul(*scalars)
        sign = ""
        if coeff.could_extract_minus_sign():
            sign, coeff = "-", -coeff
        parts = [self._wrap(t) for t in tensors]
        body = r" \odot ".join(parts)
        if coeff == 1:
            return sign + body
        return sign + self._wrap_scalar(coeff) + " " + body

    def _mul_expanded(self, expr):
        """Scalar formulas: factors joined by ``\\cdot`` so that no product reads as a call."""
        coeff, rest = expr.as_coeff_Mul()
        sign = ""
        if coeff < 0:
            sign, coeff = "-", -coeff
        args = list(sp.Mul.make_args(rest))
        if coeff != 1:
            args.insert(0, coeff)
        out = ""
        for k, f in enumerate(args):
            text = paren(self._print(f)) if f.is_Add else self._print(f)
            simple = k > 0 and (f.is_Symbol or f.is_Number) and (args[k - 1].is_Symbol or
                                                                  args[k - 1].is_Number)
            out += ("" if k == 0 else " " if simple else r" \cdot ") + text
        return sign + out

    def _is_signal(self, expr: sp.Expr) -> bool:
        value = self.by_symbol.get(expr) if isinstance(expr, sp.Symbol) else None
        return value is not None and value.kind == "delta"

    def _wrap_scalar(self, coeff: sp.Expr) -> str:
        text = self._print(coeff)
        return paren(text) if coeff.is_Add else text

    def _mul_scalar(self, expr):
        """A product with at most one tensor factor; matrix products keep their parentheses."""
        products = [a for a in expr.args if isinstance(a, MatProd)]
        if products:
            rest = sp.Mul(*(a for a in expr.args if not isinstance(a, MatProd)))
            sign = ""
            if rest.could_extract_minus_sign():
                sign, rest = "-", -rest
            if len(products) == 1:
                body = self._print(products[0])
            else:
                body = " ".join(paren(self._print(f)) for f in products)
            if rest == 1:
                return sign + body
            return sign + self._wrap_scalar(rest) + " " + body
        return super()._print_Mul(expr)

    # ---------------------------------------------------------------- tensor operations
    def _print_MatProd(self, expr, exp=None):
        a, b = expr.args
        sa, sb = self.shape(a), self.shape(b)
        if self.expanded or (len(sa) == 1 and len(sb) == 1):
            if self.expanded:
                size = self.sizes.get(a) or self.sizes.get(b) or ""
                inner = "k" if self.element != "k" else "m"
                saved = self.element
                self.element = inner
                try:
                    body = f"{self._wrap(a)} {self._wrap(b)}"
                finally:
                    self.element = saved
                upper = f"^{{{size}}}" if size else ""
                return rf"\left(\sum_{{{inner}=1}}{upper} {body}\right)"
            return f"{self._transposed(a)} {self._operand(b)}"
        if len(sa) == 1 and len(sb) == 2:
            return f"{self._transposed(a)} {self._operand(b)}"
        return f"{self._operand(a)} {self._operand(b)}"

    def _transposed(self, expr: sp.Expr) -> str:
        if isinstance(expr, sp.Symbol):
            return self._name(expr, transposed=True)
        if isinstance(expr, Transposed):
            return self._wrap(expr.args[0])
        return paren(self._print(expr)) + r"^{\top}"

    def _print_Transposed(self, expr, exp=None):
        return self._transposed(expr.args[0])

    def _print_Outer(self, expr, exp=None):
        a, b = expr.args
        return f"{self._operand(a)} {self._transposed(b)}"

    def _operand(self, expr: sp.Expr) -> str:
        """A factor of a matrix product: in parentheses unless it is one symbol or call."""
        text = self._print(expr)
        if isinstance(expr, (sp.Symbol, sp.Function, Transposed)) or expr.is_Number:
            return text
        return paren(text)

    def _print_SumAll(self, expr, exp=None):
        arg = expr.args[0]
        inner = self._arg(arg) if (arg.is_Add or arg.is_Mul) else self._print(arg)
        return rf"\mathbf{{1}}^{{\top}} {inner}"

    def _print_Softmax(self, expr, exp=None):
        return self._apply(r"\operatorname{softmax}", *expr.args, exp=exp)

    def _print_LogSumExp(self, expr, exp=None):
        return self._apply(r"\operatorname{logsumexp}", *expr.args, exp=exp)

    def _print_Pick(self, expr, exp=None):
        z, y = expr.args
        label = self._print(y)
        if isinstance(z, sp.Symbol):
            value = self.by_symbol[z]
            if not value.shape or self.notation.names[value.name].sub or self.sample:
                out = rf"[{self._print(z)}]_{{{label}}}"
            else:
                out = self.notation.latex(value.name, label)
        else:
            out = rf"[{self._print(z)}]_{{{label}}}"
        return f"{out}^{{{exp}}}" if exp else out

    def _print_OneHot(self, expr, exp=None):
        out = rf"\mathbf{{e}}_{{{self._print(expr.args[0])}}}"
        return f"{out}^{{{exp}}}" if exp else out

    def _print_Broadcast(self, expr, exp=None):
        return rf"{self._wrap(expr.args[0])}\,\mathbf{{1}}"

    # ---------------------------------------------------------------- elementwise
    def _print_Sigmoid(self, expr, exp=None):
        if self.expanded:  # written out, so the expanded formulas use elementary functions only
            out = rf"\frac{{1}}{{1 + {self._print(sp.exp(-expr.args[0]))}}}"
            return paren(out) + f"^{{{exp}}}" if exp else out
        return self._apply(r"\sigma", *expr.args, exp=exp)

    def _print_exp(self, expr, exp=None):
        """e^{u}; exp(u) when u is tall (a sum or a fraction), so the exponent stays readable."""
        arg = self._print(expr.args[0])
        if any(tall in arg for tall in (r"\sum", r"\frac")):
            out = rf"\exp\left({arg}\right)"
            return f"{out}^{{{exp}}}" if exp else out
        return super()._print_ExpBase(expr, exp)

    def _print_Relu(self, expr, exp=None):
        return self._apply(r"\operatorname{relu}", *expr.args, exp=exp)

    def _print_Step(self, expr, exp=None):
        out = rf"\mathbf{{1}}[{self._print(expr.args[0])} > 0]"
        return f"{out}^{{{exp}}}" if exp else out

    def _print_LeakyRelu(self, expr, exp=None):
        z, alpha = expr.args
        return self._apply(rf"\operatorname{{leaky\_relu}}_{{{self._print(alpha)}}}", z, exp=exp)

    def _print_Softplus(self, expr, exp=None):
        return self._apply(r"\operatorname{softplus}", *expr.args, exp=exp)

    def _print_Elu(self, expr, exp=None):
        return self._apply(r"\operatorname{elu}", *expr.args, exp=exp)

    def _print_Gelu(self, expr, exp=None):
        return self._apply(r"\operatorname{gelu}", *expr.args, exp=exp)

    def _print_Clip(self, expr, exp=None):
        return self._apply(r"\operatorname{clip}", *expr.args, exp=exp)

    def _print_Huber(self, expr, exp=None):
        r, d = expr.args
        return self._apply(rf"\operatorname{{huber}}_{{{self._print(d)}}}", r, exp=exp)

    def _print_UserFunction(self, expr, exp=None):
        name = type(expr).__name__.replace("_", r"\_")
        return self._apply(rf"\operatorname{{{name}}}", *expr.args, exp=exp)


# ============================================================================ equations


@dataclass(frozen=True)
class Equation:
    """One displayed equation: ``lhs = rhs`` with the SymPy ``source`` that ``rhs`` prints."""

    lhs: str
    rhs: str
    source: sp.Expr
    step: str | None = None   # the Step it shows; None for derived lines (e.g. the recursion)
    tag: int | None = None
    note: str = ""            # short LaTeX text shown beside it


@dataclass(frozen=True)
class BatchGradient:
    """∂C/∂θ for the batch: the mean of the per-sample gradients, and its matrix form."""

    param: str
    lhs: str
    mean: str                 # (1/n) Σ_i ∂ℓ_i/∂θ (+ λθ)
    matrix: str | None        # e.g. (1/n) Δ⁽ˡ⁾ᵀ A⁽ˡ⁻¹⁾ (+ λθ), when the gradient has that form
    source: sp.Expr | None    # the matrix form over batch symbols (see ``batch_symbols``)
    batch_symbols: dict[sp.Symbol, str]  # batch symbol → the per-sample tensor stacked as rows
    tag: int | None = None


def _printer(d: Derivation, notation: Notation | None = None, **kw) -> DerivationLatexPrinter:
    return DerivationLatexPrinter(notation or Notation(d), **kw)


def _step_lhs(notation: Notation, step: Step) -> str:
    if step.role == "grad":
        return notation.grad_latex(step.of or "")
    if step.role == "delta":
        node = step.of or ""
        name = notation.latex(step.name)
        if notation.is_fraction(step.name):
            return name
        return rf"{name} = \frac{{\partial \ell}}{{\partial {notation.latex(node)}}}"
    return notation.latex(step.name)


def forward_equations(d: Derivation, notation: Notation | None = None) -> list[Equation]:
    """One tagged equation per forward step: z⁽ˡ⁾ = W⁽ˡ⁾ a⁽ˡ⁻¹⁾ + b⁽ˡ⁾, a⁽ˡ⁾ = f(z⁽ˡ⁾), ..., ℓ."""
    notation = notation or Notation(d)
    printer = _printer(d, notation)
    tags = equation_tags(d)
    return [Equation(_step_lhs(notation, s), printer.doprint(s.expr), s.expr, s.name, tags[s.name],
                     _forward_note(s)) for s in d.forward]


def _forward_note(step: Step) -> str:
    return {"pre": "pre-activation", "activation": "activation", "loss": "loss of one sample"}.get(
        step.role, "")


def _consumers(d: Derivation, name: str) -> list[str]:
    sym = d.symbol(name)
    return [s.name for s in d.forward if sym in s.expr.free_symbols]


def backward_equations(d: Derivation, notation: Notation | None = None) -> list[Equation]:
    """One tagged chain-rule step per backward step, plus the seed's δ recursion where it applies.

    A δ⁽ˡ⁾ computed from ∂ℓ/∂a⁽ˡ⁾ is followed by the same δ⁽ˡ⁾ with ∂ℓ/∂a⁽ˡ⁾ substituted:
    δ⁽ˡ⁾ = ((W⁽ˡ⁺¹⁾)ᵀ δ⁽ˡ⁺¹⁾) ⊙ f'(z⁽ˡ⁾) (untagged: it is the tagged lines combined).
    """
    notation = notation or Notation(d)
    printer = _printer(d, notation)
    tags = equation_tags(d)
    out: list[Equation] = []
    activation_deltas = {d.symbol(s.name): s for s in d.backward
                         if s.role == "delta" and notation.is_fraction(s.name)}
    for step in d.backward:
        uses = _consumers(d, step.of or "")
        via = ", ".join(f"({tags[u]})" for u in uses)
        note = f"chain rule through {via}" if via else "unused: zero"
        out.append(Equation(_step_lhs(notation, step), printer.doprint(step.expr), step.expr,
                            step.name, tags[step.name], note))
        inner = step.expr.free_symbols & set(activation_deltas)
        if step.role == "delta" and inner and not notation.is_fraction(step.name):
            combined = step.expr.xreplace({s: activation_deltas[s].expr for s in inner})
            sources = ", ".join(f"({tags[activation_deltas[s].name]})" for s in
                                sorted(inner, key=lambda s: tags[activation_deltas[s].name]))
            out.append(Equation(notation.latex(step.name), printer.doprint(combined), combined,
                                None, None, f"recursion: {sources} in ({tags[step.name]})"))
    return out


# ---------------------------------------------------------------------------- batch forms


def batch_gradients(d: Derivation, notation: Notation | None = None) -> list[BatchGradient]:
    r"""∂C/∂θ = (1/n) Σ_i ∂ℓ_i/∂θ (+ λθ), and the matrix form when the gradient has one.

    Batch matrices have one row per sample (X has rows xᵢᵀ, Δ⁽ˡ⁾ rows δᵢ⁽ˡ⁾ᵀ); 1 is the
    all-ones vector of length n. Matrix forms recognised: δ aᵀ → (1/n) Δᵀ A; a vector δ → (1/n) Δᵀ1;
    a scalar δ times a vector x → (1/n) Xᵀ Δ; a scalar δ → (1/n) 1ᵀΔ.
    """
    notation = notation or Notation(d)
    tags = equation_tags(d)
    n = sp.Symbol("n", positive=True)
    ones = sp.Symbol("ones_n")
    printer_i = _printer(d, notation, sample="i")
    out = []
    for param, step in d.grads.items():
        value = d.values[param]
        l2 = sp.Float(d.spec.l2) if param in d.l2_params else None
        decay = ""
        if l2 is not None:
            decay = rf" + \lambda {notation.latex(param)}"
        lhs = notation.grad_latex(param, batch=True)
        if not step.batched:
            mean = printer_i.doprint(step.expr) + decay
        else:
            mean = _mean_latex(printer_i, step.expr) + decay
        names: dict[sp.Symbol, str] = {n: "n", ones: r"\mathbf{1}"}
        shapes: dict[sp.Symbol, tuple] = {n: (), ones: ("n",)}
        stacked: dict[sp.Symbol, str] = {}

        def batch(sym: sp.Symbol) -> sp.Symbol | None:
            v = d.values[str(sym)]
            text = notation.matrix(v.name) if v.batched else None
            if text is None:
                return None
            b = sp.Symbol(f"{v.name}__batch")
            names[b] = text
            shapes[b] = ("n", *v.shape)
            stacked[b] = v.name
            return b

        source = _matrix_form(d, step.expr, value.shape, batch, ones)
        matrix = None
        if source is not None:
            source = source / n
            printer_b = _printer(d, notation, extra_names=names, extra_shapes=shapes)
            matrix = printer_b.doprint(source) + decay
            if l2 is not None:
                source = source + sp.Symbol("lambda_l2") * value.symbol
        out.append(BatchGradient(param, lhs, mean, matrix, source, stacked, tags[step.name]))
    return out


def _mean_latex(printer: DerivationLatexPrinter, expr: sp.Expr, group: bool = False) -> str:
    """(1/n) Σ_i expr_i, the sign pulled in front; ``group``: the summand in parentheses."""
    sign = ""
    if expr.is_Mul and expr.as_coeff_Mul()[0] < 0:
        sign, expr = "-", -expr
    text = printer.doprint(expr)
    if expr.is_Add or (group and not expr.is_Symbol):
        text = rf"\left({text}\right)"
    return rf"{sign}\frac{{1}}{{n}} \sum_{{i=1}}^{{n}} {text}"


def _matrix_form(d: Derivation, expr: sp.Expr, shape: tuple, batch, ones: sp.Symbol
                 ) -> sp.Expr | None:
    """Σ_i of the per-sample gradient ``expr`` as products of batch matrices (None: no form)."""
    if isinstance(expr, Outer) and all(isinstance(a, sp.Symbol) for a in expr.args):
        a, b = (batch(s) for s in expr.args)
        if a is not None and b is not None:
            return MatProd(Transposed(a), b)
    if isinstance(expr, sp.Symbol) and d.values[str(expr)].batched:
        a = batch(expr)
        if a is None:
            return None
        if len(shape) == 1:
            return MatProd(Transposed(a), ones)
        if shape == ():
            return MatProd(ones, a)
    if expr.is_Mul and len(expr.args) == 2 and all(isinstance(a, sp.Symbol) for a in expr.args):
        s, v = sorted(expr.args, key=lambda a: len(d.values[str(a)].shape))
        if d.values[str(s)].shape == () and len(d.values[str(v)].shape) == 1 and len(shape) == 1:
            bs, bv = batch(s), batch(v)
            if bs is not None and bv is not None and d.values[str(s)].batched \
                    and d.values[str(v)].batched:
                return MatProd(Transposed(bv), bs)
    return None


# ---------------------------------------------------------------------------- expanded


def expanded_applies(d: Derivation) -> bool:
    """Scalar-parameter models (curve fits, linear and logistic regression): every parameter a
    scalar or a vector and every node a scalar, so each gradient entry has a short formula."""
    if any(len(p.shape) > 1 for p in d.spec.params):
        return False
    if any(s.shape != () for s in d.forward):
        return False
    if len(d.spec.input_shape) > 1 or len(d.spec.target_shape) > 0 or d.spec.classes:
        return False
    for param in d.grads:
        for node in sp.preorder_traversal(d.expanded_grad(param)):
            if isinstance(node, TensorOp) and not isinstance(node, MatProd):
                return False
            if isinstance(node, (StepFn, Relu, LeakyRelu, Elu, Gelu, Clip, Huber, Softplus)):
                return False
    return True


def expanded_gradients(d: Derivation, notation: Notation | None = None) -> list[Equation]:
    r"""∂C/∂θ (or ∂C/∂θ_j for a vector θ) with every δ and node substituted: one formula in the
    data (x_{ij}, y_i) and the parameters. Empty unless :func:`expanded_applies`."""
    if not expanded_applies(d):
        return []
    notation = notation or Notation(d)
    sizes = {v.symbol: v.shape[0] for v in d.values.values() if len(v.shape) == 1}
    out = []
    for param in d.grads:
        value = d.values[param]
        expr = d.expanded_grad(param)
        element = "j" if value.shape else ""
        printer = _printer(d, notation, sample="i", element=element, expanded=True, sizes=sizes)
        expr = sp.factor_terms(expr)
        rhs = _mean_latex(printer, expr, group=True)
        lhs = rf"\frac{{\partial C}}{{\partial {notation.latex(param, element)}}}"
        note = f"$j = 1, \\dots, {value.shape[0]}$" if value.shape else ""
        out.append(Equation(lhs, rhs, expr, None, None, note))
    return out


# ============================================================================ document text

_RULES_LATEX = {
    "softmax_cross_entropy": (
        r"\delta = \operatorname{softmax}(z) - y",
        r"softmax followed by cross-entropy: the softmax Jacobian cancels against the log, so "
        r"the error signal is prediction minus target ($y$ one-hot, written $\mathbf{e}_y$ for "
        r"an integer label)."),
    "sigmoid_bce": (
        r"\delta = \sigma(z) - y",
        r"binary cross-entropy of $\sigma(z)$ is computed in logits form, "
        r"$\operatorname{softplus}(z) - y z$, whose derivative is $\sigma(z) - y$; it stays "
        r"finite for large $|z|$."),
    "sigmoid_derivative": (
        r"\sigma'(z) = \sigma(z)\,\bigl(1 - \sigma(z)\bigr)",
        r"the derivative of the logistic function reuses its value."),
    "tanh_derivative": (
        r"\tanh'(z) = 1 - \tanh^{2}(z)",
        r"the derivative of $\tanh$ reuses its value."),
    "relu_derivative": (
        r"\operatorname{relu}'(z) = \mathbf{1}[z > 0]",
        r"relu is not differentiable at $0$; the subgradient $0$ is used there, as PyTorch does."),
    "logsumexp": (
        r"\operatorname{logsumexp}(z) = m + \log \sum_j e^{z_j - m},\ m = \max_j z_j",
        r"subtracting the maximum keeps every exponential at most $1$, so nothing overflows."),
    "log_softmax": (
        r"\log \operatorname{softmax}(z) = z - \operatorname{logsumexp}(z)",
        r"the log of a softmax is computed without forming the softmax, which could underflow."),
}

_TEXT_UNICODE = {
    "−": "-", "∂": r"$\partial$", "Σ": r"$\Sigma$", "σ": r"$\sigma$", "≤": r"$\le$",
    "²": r"$^2$", "ᵀ": r"$^\top$", "δ": r"$\delta$", "ℓ": r"$\ell$", "θ": r"$\theta$",
    "…": r"\dots{}", "–": "--", "—": "---", "×": r"$\times$", "→": r"$\to$", "’": "'",
}


def tex_escape(text: str) -> str:
    """Plain text for LaTeX: specials escaped, known Unicode mapped, other non-ASCII as ``?``."""
    out = []
    for ch in str(text):
        if ch in "\\":
            out.append(r"\textbackslash{}")
        elif ch in "{}_#$%&":
            out.append("\\" + ch)
        elif ch == "^":
            out.append(r"\^{}")
        elif ch == "~":
            out.append(r"\~{}")
        elif ch in "<>|":
            out.append(f"\\texttt{{\\char`\\{ch}}}")
        elif ch in _TEXT_UNICODE:
            out.append(_TEXT_UNICODE[ch])
        elif ord(ch) > 126 or (ord(ch) < 32 and ch not in "\n\t"):
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def _tt(text: str) -> str:
    """Typewriter text that may break after operators, commas and parentheses."""
    escaped = tex_escape(text)
    escaped = re.sub(r"([,(+*/@=]|(?<!\\)-)", r"\1\\allowbreak{}", escaped)
    return r"\texttt{" + escaped + "}"


def _shape_latex(shape: tuple, classes: int | None = None) -> str:
    if classes:
        return rf"\{{0, \dots, {classes - 1}\}}"
    if not shape:
        return r"\mathbb{R}"
    return r"\mathbb{R}^{" + r" \times ".join(str(s) for s in shape) + "}"


def _kind_text(d: Derivation, name: str, notation: Notation) -> str:
    v = d.values[name]
    if v.kind == "input":
        return "input (one sample)"
    if v.kind == "target":
        return "target label (one-hot: $\\mathbf{e}_y$)" if v.classes else "target"
    if v.kind == "param":
        init = d.spec.param(name).init
        return f"parameter, init {tex_escape(str(init))}"
    step = notation.steps[name]
    if step.role == "pre":
        return f"pre-activation $z^{{({step.layer})}}$ of layer {step.layer}"
    if step.role == "activation":
        return f"activation $a^{{({step.layer})}}$ of layer {step.layer}"
    if step.role == "loss":
        return "loss of one sample"
    return "model line, the prediction" if name == d.prediction else "model line"


@dataclass
class _Content:
    """Everything the LaTeX and Markdown documents show, printed once."""

    d: Derivation
    notation: Notation
    forward: list[Equation]
    backward: list[Equation]
    batch: list[BatchGradient]
    expanded: list[Equation]


def _content(d: Derivation) -> _Content:
    notation = Notation(d)
    return _Content(d, notation, forward_equations(d, notation), backward_equations(d, notation),
                    batch_gradients(d, notation), expanded_gradients(d, notation))


def _cost_latex(d: Derivation, notation: Notation) -> str:
    text = r"C = \frac{1}{n} \sum_{i=1}^{n} \ell_i"
    if d.l2_params:
        norms = " + ".join(rf"\lVert {notation.latex(p)} \rVert^{{2}}" for p in d.l2_params)
        text += rf" + \frac{{\lambda}}{{2}} \left({norms}\right)"
    return text


def _optimizer_lines(d: Derivation) -> tuple[str, list[str], str]:
    """(sentence, display lines, hyper-parameters) of the configured optimizer's update rule."""
    t = d.spec.train
    g = r"g_t"
    grad = r"g_t = \frac{\partial C}{\partial \theta}\Big|_{\theta_{t-1}}"
    eta = rf"\eta = {_num(t.lr)}"
    batch = ("the full batch" if not t.batch_size else
             f"minibatches of {t.batch_size} samples (C is then the cost of the minibatch)")
    opt = t.optimizer
    if opt in ("gd", "sgd"):
        name = "gradient descent" if opt == "gd" else "stochastic gradient descent"
        return (f"{name.capitalize()} on {batch}, for every parameter $\\theta$:",
                [grad, rf"\theta_t = \theta_{{t-1}} - \eta\, {g}"], eta)
    if opt == "momentum":
        return (f"Gradient descent with momentum on {batch}:",
                [grad, rf"v_t = \mu\, v_{{t-1}} + {g}", r"\theta_t = \theta_{t-1} - \eta\, v_t"],
                rf"{eta},\ \mu = {_num(t.momentum)},\ v_0 = 0")
    if opt == "nesterov":
        return (f"Nesterov momentum on {batch}:",
                [grad, rf"v_t = \mu\, v_{{t-1}} + {g}",
                 rf"\theta_t = \theta_{{t-1}} - \eta \left({g} + \mu\, v_t\right)"],
                rf"{eta},\ \mu = {_num(t.momentum)},\ v_0 = 0")
    if opt == "rmsprop":
        return (f"RMSProp on {batch} (squares, roots and the division elementwise):",
                [grad, rf"s_t = \rho\, s_{{t-1}} + (1 - \rho)\, {g} \odot {g}",
                 rf"\theta_t = \theta_{{t-1}} - \eta\, \frac{{{g}}}{{\sqrt{{s_t}} + \epsilon}}"],
                rf"{eta},\ \rho = {_num(t.rho)},\ \epsilon = {_num(t.eps)},\ s_0 = 0")
    adam = [grad, rf"m_t = \beta_1 m_{{t-1}} + (1 - \beta_1)\, {g}",
            rf"v_t = \beta_2 v_{{t-1}} + (1 - \beta_2)\, {g} \odot {g}",
            r"\hat{m}_t = \frac{m_t}{1 - \beta_1^{t}}, \qquad \hat{v}_t = \frac{v_t}{1 - \beta_2^{t}}"]
    hyper = (rf"{eta},\ \beta_1 = {_num(t.beta1)},\ \beta_2 = {_num(t.beta2)},\ "
             rf"\epsilon = {_num(t.eps)},\ m_0 = v_0 = 0")
    if opt == "adamw":
        adam.append(r"\theta_t = \theta_{t-1} - \eta \left(\frac{\hat{m}_t}{\sqrt{\hat{v}_t} + "
                    r"\epsilon} + w\, \theta_{t-1}\right)")
        return (f"AdamW (Adam with decoupled weight decay) on {batch}, elementwise:", adam,
                hyper + rf",\ w = {_num(t.weight_decay)}")
    adam.append(r"\theta_t = \theta_{t-1} - \eta\, \frac{\hat{m}_t}{\sqrt{\hat{v}_t} + \epsilon}")
    return f"Adam on {batch}, elementwise:", adam, hyper


def _num(x: float) -> str:
    text = f"{x:g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = rf"{mant} \cdot 10^{{{int(exp)}}}" if mant != "1" else rf"10^{{{int(exp)}}}"
    return text


def _verification_rows(report: "CheckReport", notation: Notation) -> list[tuple[str, ...]]:
    """Rows of the check table, already LaTeX: the tensor's math name, shape, errors, status."""
    rows = []
    for r in [*report.rows, report.direction_row]:
        name = (f"${notation.latex(r.name)}$" if r.name in notation.names else
                tex_escape(r.name))
        shape = r" \times ".join(map(str, r.shape))
        rows.append((name, f"${shape}$" if shape else "scalar", str(r.checked),
                     _num_text(r.max_rel_err), _num_text(r.margin), tex_escape(r.status)))
    return rows


def _num_text(x: float) -> str:
    """A float for a table: 2.6e-09 → $2.6 \\cdot 10^{-9}$."""
    if x != x or x in (float("inf"), float("-inf")):
        return tex_escape(str(x))
    mant, _, exp = f"{x:.1e}".partition("e")
    return f"${mant} \\cdot 10^{{{int(exp)}}}$" if int(exp) else f"${mant}$"


# ---------------------------------------------------------------------------- LaTeX


LONG = 44
"""Formulas longer than this many visible symbols are shrunk to the line if they do not fit."""


def visible_length(tex: str) -> int:
    """About how many symbols wide ``tex`` renders (fractions count both lines: an upper bound)."""
    text = re.sub(r"\\(left|right|operatorname|mathbf|mathrm|mathit|text|frac|displaystyle)"
                  r"(?![A-Za-z])", "", tex)
    text = re.sub(r"\\(tanh|log|sin|cos|exp|max|sqrt)(?![A-Za-z])", r"\1", text)
    text = re.sub(r"\\(odot|cdot)(?![A-Za-z])|[-+=]", "xxx", text)   # operators and spacing
    text = re.sub(r"\\[A-Za-z]+", "x", text)
    return len(re.sub(r"[{}\s^_&]", "", text))


def fit(tex: str, width: str = r"0.72\linewidth") -> str:
    """``tex`` as is when short; otherwise inside ``\\fitmath`` so it never overflows the page."""
    return tex if visible_length(tex) <= LONG else rf"\fitmath{{{width}}}{{{tex}}}"


def _align(rows: Sequence[Equation], *, notes: bool = True) -> list[str]:
    lines = [r"\begin{align}"]
    # align sizes its columns over all rows: a long formula leaves no room for the notes
    notes = notes and all(visible_length(eq.rhs) <= LONG for eq in rows)
    for k, eq in enumerate(rows):
        end = r" \\" if k < len(rows) - 1 else ""
        tag = rf" \tag{{{eq.tag}}}" if eq.tag is not None else r" \notag"
        note = rf" && \text{{{eq.note}}}" if notes and eq.note else ""
        lines.append(f"  {eq.lhs} &= {fit(eq.rhs)}{note}{tag}{end}")
    lines.append(r"\end{align}")
    return lines


def latex_document(d: Derivation, *, report: "CheckReport | None" = None,
                   graph_file: str | None = None) -> str:
    """The standalone LaTeX document (article, amsmath) of the derivation, as text.

    ``graph_file``: a PDF/PNG of the computation graph next to the ``.tex`` (included with
    ``\\includegraphics``); None writes the graph as a table of edges instead.
    ``report``: a finite-difference check (:class:`symbolic.check.CheckReport`) to include.
    """
    c = _content(d)
    n = c.notation
    spec = d.spec
    title = tex_escape(spec.name)
    L: list[str] = [
        "% Generated by symgrad from the spec " + tex_escape(spec.name) + "; do not edit.",
        r"\documentclass[11pt]{article}",
        r"\usepackage[a4paper,margin=2.2cm]{geometry}",
        r"\usepackage{amsmath,amssymb}",
        r"\usepackage{graphicx}",
        r"\usepackage{booktabs}",
        r"\usepackage{array}",
        r"\allowdisplaybreaks",
        r"\setlength{\parindent}{0pt}",
        r"\newsavebox{\symgradbox}",
        r"% \fitmath{W}{math}: the math at its natural size, or shrunk to width W if wider",
        r"\newcommand{\fitmath}[2]{\sbox{\symgradbox}{$\displaystyle #2$}%",
        r"  \ifdim\wd\symgradbox>#1\relax\resizebox{#1}{!}{\usebox{\symgradbox}}%",
        r"  \else\usebox{\symgradbox}\fi}",
        r"% \fitgraphic{file}: a figure at its natural size, shrunk to fit the page if larger",
        r"\newcommand{\fitgraphic}[1]{\sbox{\symgradbox}{\includegraphics[scale=0.75]{#1}}%",
        r"  \ifdim\wd\symgradbox>\linewidth\relax\symgradshrink{#1}%",
        r"  \else\ifdim\ht\symgradbox>0.55\textheight\relax\symgradshrink{#1}%",
        r"  \else\usebox{\symgradbox}\fi\fi}",
        r"\newcommand{\symgradshrink}[1]{\includegraphics[width=\linewidth,"
        r"height=0.55\textheight,keepaspectratio]{#1}}",
        r"\setlength{\parskip}{0.5ex}",
        rf"\title{{Gradients of \texttt{{{title}}}, derived by the chain rule}}",
        r"\author{symgrad}",
        r"\date{}",
        r"\begin{document}",
        r"\maketitle",
        "",
        r"\section{Model and loss}",
        "The model as written in the spec, for one sample:",
        "",
        r"\begin{center}",
        (r"\begin{tabular}{@{}l>{\raggedright\arraybackslash}p{0.75\linewidth}@{}}"
         if max(len(f) for _, f in [*spec.model, *spec.functions, ("", spec.loss)]) > 60 else
         r"\begin{tabular}{@{}ll@{}}"),
        r"\toprule",
    ]
    for name, body in spec.functions:
        L.append(rf"{_tt(name + '(z)')} & {_tt(body)} \\")
    for name, formula in spec.model:
        L.append(rf"{_tt(name)} & {_tt(formula)} \\")
    L.append(rf"loss & {_tt(spec.loss)} \\")
    if spec.l2:
        L.append(rf"L2 penalty & $\lambda = {_num(spec.l2)}$ on "
                 + ", ".join(f"${n.latex(p)}$" for p in d.l2_params) + r" \\")
    L += [r"\bottomrule", r"\end{tabular}", r"\end{center}", "",
          "Every symbol is the tensor of one sample; sums, powers and functions of tensors act "
          r"elementwise, $\odot$ is the elementwise product, $W x$ a matrix product and "
          r"$\mathbf{1}$ a vector of ones. $\ell$ is the loss of one sample and $C$ the cost "
          r"of a batch of $n$ samples that training minimises:",
          r"\begin{equation*}", "  " + _cost_latex(d, n), r"\end{equation*}", "",
          r"\begin{center}", r"\begin{tabular}{@{}lll@{}}", r"\toprule",
          r"symbol & space & role \\", r"\midrule"]
    for value in d.values.values():
        if value.kind in ("delta", "grad"):
            continue
        L.append(rf"${n.latex(value.name)}$ & ${_shape_latex(value.shape, value.classes)}$ & "
                 rf"{_kind_text(d, value.name, n)} \\")
    L += [r"\bottomrule", r"\end{tabular}", r"\end{center}", ""]

    L += [r"\section{Computation graph}",
          "Forward edges (solid) carry values from inputs and parameters to the loss; dashed "
          r"edges carry the error signals $\delta$ back to every parameter. Numbers in "
          "parentheses are the equation tags below, which the generated code repeats.", ""]
    if graph_file:
        L += [r"\begin{center}", rf"\fitgraphic{{{graph_file}}}", "",
              rf"\small Computation graph of \texttt{{{title}}}.", r"\end{center}", ""]
    else:
        L += [r"\begin{center}", r"\begin{tabular}{@{}lll@{}}", r"\toprule",
              r"node & computed from & tag \\", r"\midrule"]
        tags = equation_tags(d)
        for step in d.forward:
            inputs = [v.name for v in d.values.values() if v.symbol in step.expr.free_symbols]
            L.append(rf"${n.latex(step.name)}$ & " + ", ".join(f"${n.latex(i)}$" for i in inputs)
                     + rf" & ({tags[step.name]}) \\")
        L += [r"\bottomrule", r"\end{tabular}", r"\end{center}", ""]

    L += [r"\section{Forward pass}", "One equation per node, in the order they are computed:", ""]
    L += _align(c.forward)
    L += ["", r"\section{Backward pass}",
          r"The error signal of a pre-activation is $\delta^{(l)} = \partial \ell / \partial "
          r"z^{(l)}$. Walking the graph from the loss back to the parameters, each node's "
          r"gradient is one step of the chain rule from the nodes that use it: a matrix product "
          r"$z = W a$ passes back $\partial \ell/\partial W = \delta\, a^{\top}$ and "
          r"$\partial \ell/\partial a = W^{\top} \delta$; an elementwise $a = f(z)$ passes back "
          r"$\delta = \partial\ell/\partial a \odot f'(z)$.", ""]
    L += _align(c.backward)
    if any(eq.step is None for eq in c.backward):
        L += ["", "The untagged lines substitute one tagged line into the next: the recursion "
              r"$\delta^{(l)} = \bigl((W^{(l+1)})^{\top} \delta^{(l+1)}\bigr) \odot f'(z^{(l)})$ "
              "of the seed documents."]
    L += ["", r"\subsection*{Mean over the batch}",
          r"The code works on a batch of $n$ samples at once, with one sample per row: "
          r"a batch matrix such as $X$ stacks the $x_i^{\top}$, and $\Delta^{(l)}$ stacks the "
          r"$\delta_i^{(l)\top}$. The gradients of the cost $C$ are the means of the "
          "per-sample gradients" + (r" plus $\lambda\theta$ for the penalised weights" if
                                     d.l2_params else "") + ":", ""]
    L.append(r"\begin{align}")
    rows = []
    for bg in c.batch:
        rhs = fit(bg.mean) + (rf" \notag \\ &= {fit(bg.matrix)}" if bg.matrix else "")
        rows.append(rf"  {bg.lhs} &= {rhs} \notag")
    L.append(" \\\\[1ex]\n".join(rows))
    L.append(r"\end{align}")

    L += ["", r"\section{Simplifications}"]
    if d.rules:
        L.append(r"\begin{itemize}")
        for rule in d.rules:
            formula, reason = _RULES_LATEX.get(rule.name, (None, None))
            if formula is None:
                L.append(rf"\item {tex_escape(rule.result)}: {tex_escape(rule.reason)}")
            else:
                L.append(rf"\item ${formula}$: {reason}")
        L.append(r"\end{itemize}")
    else:
        L.append("No named simplification applied; every derivative is SymPy's, as printed.")

    if c.expanded:
        L += ["", r"\section{Expanded scalar gradients}",
              r"With every node and error signal substituted, each gradient entry is one "
              r"formula in the data ($x_{ij}$ is feature $j$ of sample $i$) and the "
              "parameters:", ""]
        L += _align(c.expanded)

    head, lines, hyper = _optimizer_lines(d)
    t = spec.train
    L += ["", r"\section{Update rule}", head, ""]
    L += [r"\begin{align*}", " \\\\\n".join("  " + x.replace("=", "&=", 1) for x in lines),
          r"\end{align*}", f"with ${hyper}$, for {t.epochs} epochs"
          + (f", minibatches shuffled with seed {t.seed}." if t.batch_size else ".")]

    if report is not None:
        L += ["", r"\section{Verification by finite differences}",
              "The gradients were compared with central finite differences in float64 at "
              f"{report.points} points (seed {report.seed}); relative error "
              r"$|a - n| / \max(|a|, |n|)$, margin = error / tolerance (below 1 passes).", "",
              r"\begin{center}", r"\begin{tabular}{@{}llrrrl@{}}", r"\toprule",
              r"tensor & shape & checked & max rel.\ error & margin & status \\", r"\midrule"]
        for row in _verification_rows(report, n):
            L.append(" & ".join(row) + r" \\")
        L += [r"\bottomrule", r"\end{tabular}", r"\end{center}", "",
              rf"Overall: \textbf{{{tex_escape(report.status)}}}."]
        for note in report.notes:
            L.append(rf"\par Note: {tex_escape(note)}")
    L += ["", r"\end{document}", ""]
    return "\n".join(L)


# ---------------------------------------------------------------------------- Markdown


def markdown_document(d: Derivation, *, report: "CheckReport | None" = None,
                      graph_file: str | None = None) -> str:
    """The derivation as Markdown with ``$$`` display math (GitHub, Jupyter)."""
    c = _content(d)
    n = c.notation
    spec = d.spec
    out = [f"# Gradients of `{spec.name}`, derived by the chain rule", "",
           "## Model and loss", "", "```toml"]
    out += [f'{name}(z) = "{body}"' for name, body in spec.functions]
    out += [f'{name} = "{formula}"' for name, formula in spec.model]
    out += [f'loss = "{spec.loss}"', "```", "",
            "Every symbol is the tensor of one sample; functions and powers act elementwise, "
            "$\\odot$ is the elementwise product, $\\ell$ the loss of one sample and $C$ the "
            "cost of a batch of $n$ samples:", "", "$$" + _cost_latex(d, n) + "$$", "",
            "| symbol | space | role |", "|---|---|---|"]
    for value in d.values.values():
        if value.kind in ("delta", "grad"):
            continue
        role = _kind_text(d, value.name, n).replace(r"\\", "\\")
        out.append(f"| ${n.latex(value.name)}$ | ${_shape_latex(value.shape, value.classes)}$ "
                   f"| {role} |")
    out += ["", "## Computation graph", ""]
    if graph_file:
        out += [f"![computation graph of {spec.name}]({graph_file})", ""]
    else:
        tags = equation_tags(d)
        for step in d.forward:
            inputs = [v.name for v in d.values.values() if v.symbol in step.expr.free_symbols]
            out.append(f"- $({tags[step.name]})\\ {n.latex(step.name)} \\leftarrow "
                       + ", ".join(n.latex(i) for i in inputs) + "$")
        out.append("")

    def display(eqs: Sequence[Equation]) -> list[str]:
        lines = []
        for eq in eqs:
            tag = rf" \tag{{{eq.tag}}}" if eq.tag is not None else ""
            lines += ["$$", f"{eq.lhs} = {eq.rhs}{tag}", "$$", ""]
        return lines

    out += ["## Forward pass", ""] + display(c.forward)
    out += ["## Backward pass", "",
            "$\\delta^{(l)} = \\partial\\ell/\\partial z^{(l)}$; one chain-rule step per node "
            "(untagged lines: the seed's recursion "
            "$\\delta^{(l)} = ((W^{(l+1)})^{\\top}\\delta^{(l+1)}) \\odot f'(z^{(l)})$).", ""]
    out += display(c.backward)
    out += ["### Mean over the batch", "",
            "Batch matrices have one sample per row ($X$ stacks the $x_i^{\\top}$).", ""]
    for bg in c.batch:
        rhs = bg.mean + (f" = {bg.matrix}" if bg.matrix else "")
        out += ["$$", f"{bg.lhs} = {rhs}", "$$", ""]
    out += ["## Simplifications", ""]
    for rule in d.rules:
        formula, reason = _RULES_LATEX.get(rule.name, (None, None))
        out.append(f"- ${formula}$: {reason}" if formula else f"- {rule.result}: {rule.reason}")
    if not d.rules:
        out.append("No named simplification applied.")
    out.append("")
    if c.expanded:
        out += ["## Expanded scalar gradients", ""] + display(c.expanded)
    head, lines, hyper = _optimizer_lines(d)
    out += ["## Update rule", "", head, "", "$$", "\\begin{aligned}",
            " \\\\\n".join(x.replace("=", "&=", 1) for x in lines), "\\end{aligned}", "$$", "",
            f"with ${hyper}$.", ""]
    if report is not None:
        out += ["## Verification by finite differences", "",
                "| tensor | shape | checked | max rel. error | margin | status |",
                "|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(row).replace(r"\_", "_") + " |"
                for row in _verification_rows(report, n)]
        out += ["", f"Overall: **{report.status}**.", ""]
        out += [f"Note: {note}" for note in report.notes]
    return "\n".join(out).rstrip("\n") + "\n"


def derivation_markdown_math(d: Derivation) -> str:
    """Display math for a notebook (``Derivation._repr_latex_``): forward, backward, batch."""
    c = _content(d)

    def block(title: str, eqs: Sequence[tuple[str, str, int | None]]) -> str:
        rows = [rf"\text{{{title}}} & \\"]
        for lhs, rhs, tag in eqs:
            mark = rf"\qquad ({tag})" if tag is not None else ""
            rows.append(rf"{lhs} &= {rhs}{mark} \\")
        return "$$\\begin{aligned}\n" + "\n".join(rows) + "\n\\end{aligned}$$"

    parts = [
        block("Forward pass", [(e.lhs, e.rhs, e.tag) for e in c.forward]),
        block("Backward pass (one sample)", [(e.lhs, e.rhs, e.tag) for e in c.backward]),
        block("Mean over the batch", [(b.lhs, b.matrix or b.mean, None) for b in c.batch]),
    ]
    return "\n".join(parts)


# ============================================================================ writing files


def _check_target(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DocumentError(f"cannot write {path}: it is a directory; give a file name")
    if not parent.is_dir():
        raise DocumentError(f"cannot write {path}: the directory {parent} does not exist; "
                            "create it or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DocumentError(f"cannot write {path}: the directory {parent} is not writable; "
                            "choose another output path")
    if path.exists() and not os.access(path, os.W_OK):
        raise DocumentError(f"cannot write {path}: the file is read-only; choose another "
                            "output path")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and os.replace."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise DocumentError(f"cannot write {path}: {exc.strerror or exc}; choose another "
                            "output path") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_all(files: dict[Path, bytes]) -> list[Path]:
    """Write every file or none: on a failure, files this call created are removed again."""
    for path in files:
        _check_target(path)
    created: list[Path] = []
    try:
        for path, data in files.items():
            existed = path.exists()
            atomic_write(path, data)
            if not existed:
                created.append(path)
    except DocumentError:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return list(files)


PDFLATEX_RUNS = 2
"""pdflatex runs: the second settles cross-references (equation tags need only one)."""


def _find_pdflatex() -> str:
    exe = shutil.which("pdflatex")
    if exe is None:
        raise DocumentError("pdflatex not found on PATH; install TeX Live (Debian: apt-get "
                            "install texlive-latex-base texlive-latex-recommended) or leave out "
                            "--pdf to write only the .tex file")
    return exe


def compile_pdf(tex: str, *, extra: dict[str, bytes] | None = None,
                timeout: float = 120.0) -> tuple[bytes, str]:
    """Compile LaTeX text in a temporary directory; (PDF bytes, log). DocumentError on errors."""
    exe = _find_pdflatex()
    with tempfile.TemporaryDirectory(prefix="symgrad-tex-") as tmp:
        work = Path(tmp)
        (work / "doc.tex").write_text(tex, encoding="utf-8")
        for name, data in (extra or {}).items():
            (work / name).write_bytes(data)
        log = ""
        for _ in range(PDFLATEX_RUNS):
            try:
                proc = subprocess.run(
                    [exe, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                     "doc.tex"], cwd=work, capture_output=True, timeout=timeout,
                    stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise DocumentError(f"pdflatex took longer than {timeout:g} s; "
                                    "the .tex file was not compiled") from None
            log_path = work / "doc.log"
            log = log_path.read_text(encoding="latin-1") if log_path.exists() else ""
            if proc.returncode != 0 or not (work / "doc.pdf").exists():
                raise DocumentError(f"pdflatex failed: {first_latex_error(log)}; "
                                    "please report it with the spec")
        return (work / "doc.pdf").read_bytes(), log


def first_latex_error(log: str) -> str:
    """The first ``! ...`` error of a pdflatex log with its line number, on one line."""
    lines = log.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("!"):
            where = next((x for x in lines[k + 1:k + 6] if x.startswith("l.")), "")
            return (line[1:].strip() + (f" ({where.split(' ', 1)[0]})" if where else "")).strip()
    return "no error message in the log"


_OVERFULL = re.compile(r"^Overfull \\hbox \(([\d.]+)pt too wide\)(.*)$", re.M)


def overfull_boxes(log: str, *, tolerance_pt: float = 1.0) -> list[str]:
    """Overfull \\hbox warnings of a pdflatex log wider than ``tolerance_pt``."""
    return [m.group(0) for m in _OVERFULL.finditer(log) if float(m.group(1)) > tolerance_pt]


def write_latex(d: Derivation, path: str | os.PathLike[str], *, pdf: bool = False,
                report: "CheckReport | None" = None, graph: bool | None = None) -> list[Path]:
    """Write the LaTeX document to ``path`` (.tex); return the files written.

    ``graph``: None draws the computation graph (``<stem>-graph.pdf`` beside the .tex) when
    Graphviz's ``dot`` is installed and writes it as a table otherwise; True requires ``dot``;
    False always uses the table. ``pdf``: also compile ``<stem>.pdf`` with pdflatex (an error
    when pdflatex is missing, checked before anything is written). Files are written
    atomically; on an error no new file is left behind.
    """
    from .graph import GraphError, dot_available, render_graph

    path = Path(path)
    if path.suffix != ".tex":
        raise DocumentError(f"cannot write {path}: a LaTeX document needs a .tex file name")
    if pdf:
        _find_pdflatex()
    _check_target(path)
    graph_name, drawing = None, b""
    if graph or (graph is None and dot_available()):
        graph_name = f"{path.stem}-graph.pdf"
        try:
            drawing = render_graph(d, "pdf")
        except GraphError as exc:
            raise DocumentError(str(exc)) from None
    tex = latex_document(d, report=report, graph_file=graph_name)
    files = {path: tex.encode("utf-8")}
    if graph_name:
        files[path.with_name(graph_name)] = drawing
    if pdf:
        data, _ = compile_pdf(tex, extra={graph_name: drawing} if graph_name else None)
        files[path.with_suffix(".pdf")] = data
    return _write_all(files)


def write_markdown(d: Derivation, path: str | os.PathLike[str], *,
                   report: "CheckReport | None" = None, graph: bool | None = None) -> list[Path]:
    """Write the Markdown document to ``path`` (.md); the graph as ``<stem>-graph.svg`` beside
    it when ``dot`` is installed (see :func:`write_latex` for ``graph``). Returns the files."""
    from .graph import GraphError, dot_available, render_graph

    path = Path(path)
    _check_target(path)
    graph_name, drawing = None, b""
    if graph or (graph is None and dot_available()):
        graph_name = f"{path.stem}-graph.svg"
        try:
            drawing = render_graph(d, "svg")
        except GraphError as exc:
            raise DocumentError(str(exc)) from None
    files = {path: markdown_document(d, report=report, graph_file=graph_name).encode("utf-8")}
    if graph_name:
        files[path.with_name(graph_name)] = drawing
    return _write_all(files)

