"""The derivation: reverse-mode chain rule over the tensor-level op graph of a spec.

Every model line becomes a forward step ``name = expr`` (a line ``f(u)`` with an activation ``f``
is split into the pre-activation ``z<l> = u`` and ``name = f(z<l>)``, the seed documents' z⁽ˡ⁾ and
a⁽ˡ⁾); the loss is the last step. The backward pass walks the steps in reverse. Each step's
expression is differentiated by one adjoint rule per operation (:func:`_backprop`); elementwise
functions, built-in or the spec's own, are differentiated by SymPy. Every node gets its error
signal ``delta_<node>`` = ∂ℓ/∂node and every parameter its gradient ``grad_<param>`` = ∂ℓ/∂θ for
one sample ℓ; the batch gradient is the mean over samples plus ``l2·θ`` for weights.

Symbols stand for whole tensors, so the work and the size of the result do not grow with layer
widths.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import sympy as sp

from .errors import SpecError, SpecWarning
from .functions import (
    KINKED, Broadcast, Clip, Elementwise, Elu, Gelu, Huber, LeakyRelu, LogSumExp, MatProd,
    OneHot, Outer, Pick, Relu, Sigmoid, Softmax, Softplus, SumAll, Transposed, UserFunction,
    make_user_function,
)
from .names import name_problem
from .parser import ParseContext, Typed, parse_formula, parse_function_body
from .rules import RULES, Rule
from .spec import Spec

Shape = tuple[int, ...]

LOSS = "loss"
"""The name of the per-sample loss step (reserved, so no spec name can clash with it)."""

ACTIVATIONS = (Relu, Sigmoid, sp.tanh, Softplus, Elu, Gelu, LeakyRelu, UserFunction)
"""Functions that make a model line an activation a⁽ˡ⁾ = f(z⁽ˡ⁾) with its own z⁽ˡ⁾ step."""


@dataclass(frozen=True)
class Value:
    """A named tensor of the derivation: an input, target, parameter, node, δ or gradient."""

    name: str
    symbol: sp.Symbol
    shape: Shape
    kind: str  # "input" | "target" | "param" | "node" | "delta" | "grad"
    batched: bool
    classes: int | None = None


@dataclass(frozen=True)
class Step:
    """One assignment ``name = expr`` of the forward or backward pass."""

    name: str
    expr: sp.Expr
    shape: Shape
    batched: bool
    role: str  # forward: "pre", "activation", "line", "loss"; backward: "delta", "grad"
    layer: int | None = None  # l of z⁽ˡ⁾ / a⁽ˡ⁾ / δ⁽ˡ⁾
    of: str | None = None  # backward steps: the node or parameter this is the derivative for
    field: str | None = None  # the spec field it came from, e.g. "model.h"


@dataclass(frozen=True)
class Kink:
    """A point where a forward function is not differentiable: ``arg`` equals ``at``."""

    function: str
    arg: sp.Expr
    at: tuple[sp.Expr, ...]


@dataclass
class Derivation:
    """Everything derived from one spec, in the order a reader (and the code) needs it."""

    spec: Spec
    values: dict[str, Value]
    forward: list[Step]
    backward: list[Step]
    rules: list[Rule]
    kinks: list[Kink]
    warnings: list[str] = field(default_factory=list)

    @property
    def prediction(self) -> str:
        return self.spec.model[-1][0]

    @property
    def task(self) -> str:
        """``multiclass`` (softmax cross-entropy), ``binary`` (sigmoid BCE) or ``regression``."""
        names = {rule.name for rule in self.rules}
        if "softmax_cross_entropy" in names:
            return "multiclass"
        if "sigmoid_bce" in names:
            return "binary"
        return "regression"

    @property
    def params(self) -> list[Value]:
        return [self.values[p.name] for p in self.spec.params]

    @property
    def grads(self) -> dict[str, Step]:
        """The gradient step of every parameter, by parameter name."""
        return {s.of: s for s in self.backward if s.role == "grad"}  # type: ignore[misc]

    @property
    def deltas(self) -> dict[str, Step]:
        return {s.of: s for s in self.backward if s.role == "delta"}  # type: ignore[misc]

    @property
    def l2_params(self) -> list[str]:
        """Parameters the L2 penalty applies to: those with two or more dimensions."""
        return [p.name for p in self.spec.params if len(p.shape) >= 2] if self.spec.l2 else []

    def symbol(self, name: str) -> sp.Symbol:
        return self.values[name].symbol

    def shape_of(self, expr: sp.Expr) -> Shape:
        return shape_of(expr, self._shapes())

    def _shapes(self) -> dict[sp.Symbol, Shape]:
        return {v.symbol: v.shape for v in self.values.values()}

    def expanded_grad(self, param: str) -> sp.Expr:
        """∂ℓ/∂θ with every δ and intermediate node substituted: one formula in inputs/params."""
        subs: dict[sp.Symbol, sp.Expr] = {}
        for step in self.forward:
            subs[self.symbol(step.name)] = step.expr.xreplace(subs)
        for step in self.backward:
            subs[self.symbol(step.name)] = step.expr.xreplace(subs)
        return subs[self.symbol(self.grads[param].name)]

    def _repr_latex_(self) -> str:
        from .latex import derivation_markdown_math

        return derivation_markdown_math(self)


# --------------------------------------------------------------------------- shapes


def _broadcast(shapes: list[Shape]) -> Shape:
    out: Shape = ()
    for s in shapes:
        if s:
            out = s
    return out


def shape_of(expr: sp.Expr, shapes: dict[sp.Symbol, Shape]) -> Shape:
    """The per-sample shape of an expression whose symbols have the given shapes."""
    if expr.is_Symbol:
        return shapes[expr]
    if expr.is_number:
        return ()
    if isinstance(expr, (SumAll, LogSumExp, Pick)):
        return ()
    if isinstance(expr, OneHot):
        return (int(expr.args[1]),)
    if isinstance(expr, Broadcast):
        return tuple(int(d) for d in expr.args[1:])
    if isinstance(expr, Softmax):
        return shape_of(expr.args[0], shapes)
    if isinstance(expr, Transposed):
        return shape_of(expr.args[0], shapes)[::-1]
    if isinstance(expr, Outer):
        return shape_of(expr.args[0], shapes) + shape_of(expr.args[1], shapes)
    if isinstance(expr, MatProd):
        a, b = (shape_of(x, shapes) for x in expr.args)
        return a[:-1] + b[1:]
    if isinstance(expr, (Huber, Clip, LeakyRelu)):
        return shape_of(expr.args[0], shapes)
    return _broadcast([shape_of(a, shapes) for a in expr.args])


# ------------------------------------------------------------------------- deriving


def derive(spec: Spec) -> Derivation:
    """Derive the forward pass, every δ and every parameter gradient of ``spec``."""
    return _Deriver(spec).run()


class _Deriver:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.values: dict[str, Value] = {}
        self.rules: set[str] = set()
        self.forward: list[Step] = []

    def fail(self, field: str, err: SpecError) -> SpecError:
        return SpecError(err.message, source=self.spec.source, field=field,
                         line=self.spec.lines.get(field), column=err.column, hint=err.hint)

    def add_value(self, name: str, shape: Shape, kind: str, batched: bool,
                  classes: int | None = None, field: str | None = None) -> Value:
        problem = name_problem(name) if kind in ("input", "target", "param") else None
        if name in self.values or problem:
            where = field or "model"
            raise self.spec.error(f"the name `{name}` is already used" if not problem else
                                  f"invalid name: {problem}", where,
                                  hint="rename the model line or parameter")
        value = Value(name, sp.Symbol(name, real=True), shape, kind, batched, classes)
        self.values[name] = value
        return value

    def run(self) -> Derivation:
        spec = self.spec
        self.add_value(spec.input_name, spec.input_shape, "input", True)
        self.add_value(spec.target_name, spec.target_shape, "target", True, spec.classes)
        for p in spec.params:
            self.add_value(p.name, p.shape, "param", False)
        functions = self.user_functions()
        scope = {n: Typed(v.symbol, v.shape, v.batched, v.classes) for n, v in self.values.items()}
        for layer, (name, formula) in enumerate(spec.model, start=1):
            field = f"model.{name}"
            later = tuple(n for n, _ in spec.model[layer:])
            ctx = ParseContext(names=scope, functions=functions, rules=self.rules, later=later)
            try:
                typed = parse_formula(formula, ctx)
            except SpecError as err:
                raise self.fail(field, err) from None
            if typed.classes is not None:
                raise spec.error("a model line cannot be a class label", field)
            scope[name] = self.add_line(name, typed, layer, field)
        ctx = ParseContext(names=scope, functions=functions, rules=self.rules)
        try:
            loss = parse_formula(spec.loss, ctx)
        except SpecError as err:
            raise self.fail("loss.expr", err) from None
        expr = loss.expr if loss.shape == () else SumAll(loss.expr) / math.prod(loss.shape)
        self.add_value(LOSS, (), "node", True)
        self.forward.append(Step(LOSS, expr, (), True, "loss", field="loss.expr"))
        backward, warns = self.backward()
        kinks = collect_kinks(self.forward)
        rules = [RULES[name] for name in RULES if name in self.rules]
        for message in warns:
            warnings.warn(message, SpecWarning, stacklevel=3)
        return Derivation(spec, self.values, self.forward, backward, rules, kinks, warns)

    def user_functions(self) -> dict[str, type[UserFunction]]:
        functions: dict[str, type[UserFunction]] = {}
        variable = sp.Symbol("z", real=True)
        for name, body in self.spec.functions:
            field = f"functions.{name}"
            try:
                expr = parse_function_body(name, body, functions, variable)
            except SpecError as err:
                raise self.fail(field, err) from None
            functions[name] = make_user_function(name, variable, expr)
        return functions

    def add_line(self, name: str, typed: Typed, layer: int, field: str) -> Typed:
        expr = typed.expr
        if isinstance(expr, ACTIVATIONS) and not expr.args[0].is_Symbol:
            pre = f"z{layer}" if f"z{layer}" not in self.values and f"z{layer}" not in dict(
                self.spec.model) else f"{name}_pre"
            pre_value = self.add_value(pre, typed.shape, "node", typed.batched, field=field)
            self.forward.append(Step(pre, expr.args[0], typed.shape, typed.batched, "pre", layer,
                                     field=field))
            expr = expr.func(pre_value.symbol, *expr.args[1:])
            role = "activation"
        else:
            role = "line"
        value = self.add_value(name, typed.shape, "node", typed.batched, field=field)
        self.forward.append(Step(name, expr, typed.shape, typed.batched, role, layer, field=field))
        return Typed(value.symbol, value.shape, value.batched)

    # ------------------------------------------------------------------ backward
    def backward(self) -> tuple[list[Step], list[str]]:
        shapes = {v.symbol: v.shape for v in self.values.values()}
        params = {self.values[p.name].symbol: p.name for p in self.spec.params}
        needs = set(params)
        for step in self.forward:
            if step.expr.free_symbols & needs:
                needs.add(self.values[step.name].symbol)
        contributions: dict[sp.Symbol, list[sp.Expr]] = {s: [] for s in needs}
        last_use = {}
        for index, step in enumerate(self.forward):
            for sym in step.expr.free_symbols & set(params):
                last_use.setdefault(sym, index)
        steps: list[Step] = []
        for index in range(len(self.forward) - 1, -1, -1):
            step = self.forward[index]
            sym = self.values[step.name].symbol
            if sym not in needs:
                continue
            if step.role == "loss":
                delta: sp.Expr = sp.S.One
            elif not contributions[sym]:
                delta = sp.S.Zero  # nothing downstream uses this node
            else:
                total = _finish(contributions[sym], step.shape, shapes)
                batched = step.batched or any(self.values[str(s)].batched
                                              for s in total.free_symbols)
                delta_value = self.add_value(f"delta_{step.name}", step.shape, "delta",
                                             batched)
                shapes[delta_value.symbol] = step.shape
                steps.append(Step(delta_value.name, total, step.shape, batched, "delta",
                                  step.layer, of=step.name, field=step.field))
                delta = delta_value.symbol
            if delta != 0:
                _backprop(step.expr, delta, needs, shapes, contributions, self.rules)
            for param_sym, name in params.items():
                if last_use.get(param_sym) == index:
                    steps.append(self.grad_step(name, contributions[param_sym], shapes))
        for param_sym, name in params.items():
            if param_sym not in last_use:
                steps.append(self.grad_step(name, [], shapes))
        warns = [f"{self.spec.source or '<spec>'}: params.{name}: the loss does not depend on "
                 f"parameter `{name}`; its gradient is zero and training will not change it "
                 f"(remove it or use it in the loss's computation)"
                 for param_sym, name in params.items() if not contributions[param_sym]]
        return steps, warns

    def grad_step(self, name: str, terms: list[sp.Expr], shapes: dict) -> Step:
        value = self.values[name]
        grad = self.add_value(f"grad_{name}", value.shape, "grad", False)
        shapes[grad.symbol] = value.shape
        total = _finish(terms, value.shape, shapes)
        batched = any(self.values[str(sym)].batched for sym in total.free_symbols)
        return Step(grad.name, total, value.shape, batched, "grad", of=name,
                    field=f"params.{name}")


def _finish(terms: list[sp.Expr], shape: Shape, shapes: dict) -> sp.Expr:
    """Sum the chain-rule terms of one tensor and give the sum exactly that tensor's shape."""
    total = sp.Add(*terms) if terms else sp.S.Zero
    total = _tidy(total)
    return _to_shape(total, shape, shapes)


TIDY_MAX_TERMS = 64
"""A chain-rule sum whose expansion would have more terms is left as it is: expanding products
of sums grows exponentially (a random nested formula made one gradient take minutes)."""


def _expanded_terms(expr: sp.Expr) -> int:
    """An upper bound of the number of terms ``sp.expand(expr)`` has, at any depth."""
    if expr.is_Add:
        return sum(_expanded_terms(a) for a in expr.args)
    if expr.is_Mul:
        return math.prod(_expanded_terms(a) for a in expr.args)
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        return _expanded_terms(expr.base) ** int(expr.exp)
    return max([1, *(_expanded_terms(a) for a in expr.args)])


def _tidy(expr: sp.Expr) -> sp.Expr:
    """Expand when it makes the expression smaller (e.g. −y(1 − σ) + (1 − y)σ → σ − y)."""
    if _expanded_terms(expr) > TIDY_MAX_TERMS:
        return expr
    expanded = sp.factor_terms(sp.expand(expr))
    return expanded if sp.count_ops(expanded) < sp.count_ops(expr) else expr


def _to_shape(expr: sp.Expr, shape: Shape, shapes: dict) -> sp.Expr:
    have = shape_of(expr, shapes)
    if have == shape:
        return expr
    if shape == ():
        return SumAll(expr)
    if have == ():
        return Broadcast(expr, *shape)
    raise AssertionError(f"cannot bring shape {have} to {shape}")


def _backprop(expr: sp.Expr, delta: sp.Expr, needs: set, shapes: dict,
              out: dict[sp.Symbol, list[sp.Expr]], rules: set[str]) -> None:
    """Add ∂ℓ/∂u for every needed symbol u in ``expr``, given δ = ∂ℓ/∂expr (one rule per op)."""
    if not expr.free_symbols & needs:
        return
    if expr.is_Symbol:
        out[expr].append(delta)
        return
    shape = shape_of(expr, shapes)

    def push(arg: sp.Expr, d: sp.Expr) -> None:
        if not arg.free_symbols & needs:
            return
        target = shape_of(arg, shapes)
        if shape_of(d, shapes) != target and target == ():
            d = SumAll(d)
        _backprop(arg, d, needs, shapes, out, rules)

    def full(d: sp.Expr) -> sp.Expr:
        return d if shape_of(d, shapes) == shape else Broadcast(d, *shape)

    if expr.is_Add:
        # z = Σ u_k  ⇒  ∂ℓ/∂u_k = δ (summed over broadcast axes)
        for arg in expr.args:
            push(arg, delta)
    elif expr.is_Mul:
        # z = Π u_k (elementwise)  ⇒  ∂ℓ/∂u_k = δ ⊙ Π_{j≠k} u_j
        for i, arg in enumerate(expr.args):
            others = sp.Mul(*(a for j, a in enumerate(expr.args) if j != i))
            push(arg, delta * others)
    elif expr.is_Pow:
        # z = b^e  ⇒  ∂ℓ/∂b = δ e b^{e−1},  ∂ℓ/∂e = δ b^e log b
        base, exponent = expr.args
        push(base, delta * exponent * base ** (exponent - 1))
        push(exponent, delta * expr * sp.log(base))
    elif isinstance(expr, MatProd):
        _matprod_adjoint(expr, full(delta), shapes, push)
    elif isinstance(expr, Transposed):
        # z = Aᵀ  ⇒  ∂ℓ/∂A = δᵀ
        push(expr.args[0], Transposed(full(delta)))
    elif isinstance(expr, SumAll):
        # z = Σ_i u_i  ⇒  ∂ℓ/∂u = δ 1
        push(expr.args[0], delta)
    elif isinstance(expr, LogSumExp):
        # z = log Σ e^{u_j}  ⇒  ∂ℓ/∂u = δ softmax(u)
        push(expr.args[0], delta * Softmax(expr.args[0]))
    elif isinstance(expr, Softmax):
        # s = softmax(u)  ⇒  ∂ℓ/∂u = s ⊙ (δ − (δ·s))
        s = expr
        d = full(delta)
        push(expr.args[0], s * (d - MatProd(d, s)))
    elif isinstance(expr, Pick):
        # z = u_y  ⇒  ∂ℓ/∂u = δ onehot(y)
        u, y = expr.args
        push(u, delta * OneHot(y, shape_of(u, shapes)[0]))
    elif isinstance(expr, Broadcast):
        # z = s 1  ⇒  ∂ℓ/∂s = Σ δ
        push(expr.args[0], SumAll(full(delta)))
    elif isinstance(expr, (Elementwise, sp.Function)) and not isinstance(expr, (OneHot, Outer)):
        # z = f(u)  ⇒  ∂ℓ/∂u = δ ⊙ f'(u), f' by SymPy
        if isinstance(expr, Sigmoid):
            rules.add("sigmoid_derivative")
        if isinstance(expr, sp.tanh):
            rules.add("tanh_derivative")
        if isinstance(expr, Relu):
            rules.add("relu_derivative")
        for index, arg in enumerate(expr.args, start=1):
            if arg.free_symbols & needs:
                push(arg, delta * _derivative(expr, index))
    else:
        raise AssertionError(f"no adjoint rule for {type(expr).__name__}")


def _derivative(expr: sp.Function, index: int) -> sp.Expr:
    """∂f/∂(argument ``index``) of an elementwise function application, by SymPy."""
    dummies = [sp.Dummy(f"u{i}", real=True) for i in range(len(expr.args))]
    general = sp.diff(expr.func(*dummies), dummies[index - 1])
    return general.xreplace(dict(zip(dummies, expr.args)))


def _matprod_adjoint(expr: MatProd, delta: sp.Expr, shapes: dict, push) -> None:
    """z = A B  ⇒  ∂ℓ/∂A = δ Bᵀ,  ∂ℓ/∂B = Aᵀ δ, for each combination of vectors and matrices."""
    a, b = expr.args
    sa, sb = shape_of(a, shapes), shape_of(b, shapes)
    if len(sa) == 2 and len(sb) == 1:      # W x: ∂W = δ xᵀ, ∂x = Wᵀ δ
        push(a, Outer(delta, b))
        push(b, MatProd(Transposed(a), delta))
    elif len(sa) == 1 and len(sb) == 1:    # u·v: ∂u = δ v, ∂v = δ u
        push(a, delta * b)
        push(b, delta * a)
    elif len(sa) == 1 and len(sb) == 2:    # uᵀ W: ∂u = W δ, ∂W = u δᵀ
        push(a, MatProd(b, delta))
        push(b, Outer(a, delta))
    else:                                  # A B: ∂A = δ Bᵀ, ∂B = Aᵀ δ
        push(a, MatProd(delta, Transposed(b)))
        push(b, MatProd(Transposed(a), delta))


def collect_kinks(steps: list[Step]) -> list[Kink]:
    """Every place in the forward pass where a function has a kink, in a fixed order."""
    kinks: list[Kink] = []
    seen = set()
    for step in steps:
        for node in sp.preorder_traversal(step.expr):
            if not isinstance(node, KINKED) or node in seen:
                continue
            seen.add(node)
            arg = node.args[0]
            if isinstance(node, Huber):
                at: tuple = (-node.args[1], node.args[1])
            elif isinstance(node, Clip):
                at = (node.args[1], node.args[2])
            else:
                at = (sp.S.Zero,)
            kinks.append(Kink(type(node).__name__.lower(), arg, at))
    return kinks

