"""Safe parsing of formula strings into typed SymPy expressions.

A formula is parsed with :mod:`ast` and walked against a whitelist: numbers, declared names,
``+ - * / ** @``, unary minus, parentheses, ``.T`` and calls of whitelisted functions. Nothing is
evaluated: no ``eval``, ``exec`` or ``sympify`` ever sees the string. Shapes are inferred and
checked on the way, so a mismatch is reported with the sub-expression and both shapes.
"""

from __future__ import annotations

import ast
import difflib
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from .errors import SpecError
from .functions import (
    Elu, Gelu, Huber, LeakyRelu, LogSumExp, MatProd, Pick, Relu, Sigmoid, Softmax,
    Softplus, SumAll, Transposed, UserFunction,
)

MAX_FORMULA_LENGTH = 2000
"""Longest formula accepted, in characters."""
MAX_NESTING = 50
"""Deepest nesting of parentheses accepted (checked before parsing)."""
MAX_AST_DEPTH = 120
"""Deepest expression tree accepted (operators nested in operators)."""
MAX_EXPONENT = 64
"""Largest |c| accepted for a constant exponent ``u ** c``."""
MAX_CONSTANT = 1e300
"""Largest |c| accepted for any numeric constant, after constant folding."""

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Typed:
    """A parsed (sub-)expression with its per-sample shape.

    ``batched`` is true when the value changes from sample to sample (it depends on an input or a
    target); ``classes`` is set for an integer class label, which only a loss may consume.
    """

    expr: sp.Expr
    shape: Shape
    batched: bool
    classes: int | None = None


@dataclass
class ParseContext:
    """What a formula may refer to, and what the parse records (the simplifications used)."""

    names: dict[str, Typed]
    functions: dict[str, type[UserFunction]] = field(default_factory=dict)
    later: tuple[str, ...] = ()  # model lines defined further down (for a clearer error)
    rules: set[str] = field(default_factory=set)


_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}

_CONSTRUCT_NAMES = {
    ast.Subscript: "indexing (x[...])", ast.Lambda: "lambda", ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension", ast.JoinedStr: "an f-string",
    ast.Compare: "a comparison", ast.BoolOp: "and/or", ast.IfExp: "a conditional expression",
    ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set",
    ast.NamedExpr: "an assignment (:=)", ast.Starred: "unpacking (*)", ast.Await: "await",
    ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "a slice",
}

_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
              ast.MatMult: "@"}


def check_text(text: object, *, what: str = "formula") -> str:
    """Reject non-strings, over-long text and characters that could hide code or break comments."""
    if not isinstance(text, str):
        raise SpecError(f"the {what} must be a string, got {type(text).__name__}")
    if len(text) > MAX_FORMULA_LENGTH:
        raise SpecError(f"{what} too long ({len(text)} characters, the limit is "
                        f"{MAX_FORMULA_LENGTH})", hint="split it into several model lines")
    for i, ch in enumerate(text):
        if ch == "\t":
            continue
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES or not ch.isascii():
            raise SpecError(f"{what} contains the character U+{ord(ch):04X} "
                            f"({unicodedata.name(ch, 'control character')})",
                            column=i + 1, hint="formulas are one line of ASCII text")
    depth = deepest = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        raise SpecError(f"{what} too deeply nested ({deepest} levels of parentheses, the limit "
                        f"is {MAX_NESTING})", hint="name inner parts as separate model lines")
    return text


def parse_formula(text: object, ctx: ParseContext) -> Typed:
    """Parse one formula into a typed SymPy expression; raise SpecError if it is not allowed."""
    text = check_text(text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"syntax error: {exc.msg}", column=exc.offset,
                        hint="write the formula as Python-style math, e.g. relu(W1 @ x + b1)")
    except (RecursionError, MemoryError):
        raise SpecError("formula too long/deep to parse",
                        hint="name inner parts as separate model lines") from None
    result = _Walker(text.strip(), ctx).walk(tree.body, 0)
    result = Typed(stabilize(result.expr, ctx.rules), result.shape, result.batched,
                   result.classes)
    if result.expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise SpecError("the formula contains a non-finite constant (division by zero?)",
                        hint="numbers must be finite (no nan, inf or division by zero)")
    for atom in result.expr.atoms(sp.Number):
        if not atom.is_finite or abs(float(atom)) > MAX_CONSTANT:
            raise SpecError(f"the constant {atom} is not a finite number of a usable size",
                            hint="numbers must be finite (no nan, inf or division by zero)")
    return result


def stabilize(expr: sp.Expr, rules: set[str]) -> sp.Expr:
    """Rewrite logs of sigmoids and softmaxes into their stable forms, recording the rule.

    log σ(u) = −softplus(−u), log(1 − σ(u)) = −softplus(u) (so a hand-written binary
    cross-entropy becomes the logits form), log softmax(z) = z − logsumexp(z).
    """

    def match(e: sp.Expr) -> bool:
        if not isinstance(e, sp.log):
            return False
        (arg,) = e.args
        return isinstance(arg, (Sigmoid, Softmax)) or (
            arg.is_Add and len(arg.args) == 2 and sp.S.One in arg.args
            and any(isinstance(-t, Sigmoid) for t in arg.args))

    def rewrite(e: sp.Expr) -> sp.Expr:
        (arg,) = e.args
        if isinstance(arg, Sigmoid):
            rules.add("sigmoid_bce")
            return -Softplus(-arg.args[0])
        if isinstance(arg, Softmax):
            rules.update({"log_softmax", "logsumexp"})
            return arg.args[0] - LogSumExp(arg.args[0])
        (sig,) = [-t for t in arg.args if isinstance(-t, Sigmoid)]
        rules.add("sigmoid_bce")
        return -Softplus(sig.args[0])

    return expr.replace(match, rewrite)


def parse_function_body(name: str, text: object, known: dict[str, type[UserFunction]],
                        variable: sp.Symbol) -> sp.Expr:
    """Parse a ``[functions]`` body: an elementwise formula in the single variable ``z``."""
    ctx = ParseContext(names={"z": Typed(variable, (), False)}, functions=dict(known))
    body = parse_formula(text, ctx)
    return body.expr


class _Walker:
    def __init__(self, text: str, ctx: ParseContext):
        self.text = text
        self.ctx = ctx

    # ------------------------------------------------------------------ helpers
    def error(self, node: ast.AST, message: str, hint: str | None = None) -> SpecError:
        return SpecError(message, column=getattr(node, "col_offset", 0) + 1, hint=hint)

    def source(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or self.text

    def no_labels(self, node: ast.AST, *items: Typed) -> None:
        for item in items:
            if item.classes is not None:
                raise self.error(node, f"`{self.source(node)}` uses a class label as a number",
                                 hint="class labels can only be the target of "
                                      "softmax_cross_entropy(z, y)")

    def elementwise(self, node: ast.AST, a: Typed, b: Typed, expr: sp.Expr) -> Typed:
        self.no_labels(node, a, b)
        if a.shape != b.shape and a.shape != () and b.shape != ():
            raise self.error(node, f"shape mismatch in `{self.source(node)}`: {a.shape} and "
                                   f"{b.shape}", hint="elementwise operands need equal shapes "
                                                      "(or one scalar)")
        return Typed(expr, a.shape or b.shape, a.batched or b.batched)

    # ------------------------------------------------------------------- walk
    def walk(self, node: ast.AST, depth: int) -> Typed:
        if depth > MAX_AST_DEPTH:
            raise self.error(node, "formula too deep", hint="split it into several model lines")
        method = getattr(self, f"walk_{type(node).__name__}", None)
        if method is None:
            construct = _CONSTRUCT_NAMES.get(type(node), type(node).__name__)
            raise self.error(node, f"{construct} is not allowed in a formula",
                             hint="use numbers, names, + - * / ** @, .T and whitelisted functions")
        return method(node, depth + 1)

    def walk_Constant(self, node: ast.Constant, depth: int) -> Typed:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(node, f"the constant {value!r} is not a number")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.error(node, f"the constant `{self.source(node)}` is not finite",
                                 hint="use a finite number")
            return Typed(sp.Float(value), (), False)
        if abs(value) > MAX_CONSTANT:
            raise self.error(node, f"the constant `{self.source(node)}` is too large")
        return Typed(sp.Integer(value), (), False)

    def walk_Name(self, node: ast.Name, depth: int) -> Typed:
        name = node.id
        if name in self.ctx.names:
            return self.ctx.names[name]
        if name in FUNCTIONS or name in self.ctx.functions:
            raise self.error(node, f"`{name}` is a function: call it, e.g. {name}(...)")
        if name in self.ctx.later:
            raise self.error(node, f"`{name}` is used before it is defined",
                             hint=f"model lines are evaluated in order: move `{name}` above "
                                  f"this line")
        declared = sorted(self.ctx.names)
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`?" if close else "declare it under [inputs], [params] or [model]"
        raise self.error(node, f"unknown name `{name}`; declared names: {', '.join(declared)}",
                         hint=hint)

    def walk_UnaryOp(self, node: ast.UnaryOp, depth: int) -> Typed:
        operand = self.walk(node.operand, depth)
        self.no_labels(node, operand)
        if isinstance(node.op, ast.USub):
            return Typed(-operand.expr, operand.shape, operand.batched)
        if isinstance(node.op, ast.UAdd):
            return operand
        raise self.error(node, f"the operator `{type(node.op).__name__}` is not allowed",
                         hint="allowed operators: + - * / ** @")

    def walk_Attribute(self, node: ast.Attribute, depth: int) -> Typed:
        value = self.walk(node.value, depth)
        if node.attr != "T":
            raise self.error(node, f"the attribute `.{node.attr}` is not allowed",
                             hint="the only attribute is .T (transpose)")
        self.no_labels(node, value)
        if len(value.shape) < 2:
            return value
        return Typed(Transposed(value.expr), value.shape[::-1], value.batched)

    def walk_BinOp(self, node: ast.BinOp, depth: int) -> Typed:
        op = type(node.op)
        if op not in _OPERATORS:
            raise self.error(node, f"the operator `{type(node.op).__name__}` is not allowed",
                             hint="allowed operators: + - * / ** @")
        left = self.walk(node.left, depth)
        right = self.walk(node.right, depth)
        if op is ast.MatMult:
            self.no_labels(node, left, right)
            return matmul(left, right, self.source(node), lambda m: self.error(node, m))
        if op is ast.Pow:
            if right.shape != ():
                raise self.error(node, f"the exponent in `{self.source(node)}` must be a scalar")
            if right.expr.is_Number and abs(float(right.expr)) > MAX_EXPONENT:
                raise self.error(node, f"exponent constant too large in `{self.source(node)}` "
                                       f"(the limit is {MAX_EXPONENT})")
            return self.elementwise(node, left, right, left.expr ** right.expr)
        expr = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}[op](left.expr,
                                                                                  right.expr)
        return self.elementwise(node, left, right, expr)

    def walk_Call(self, node: ast.Call, depth: int) -> Typed:
        if not isinstance(node.func, ast.Name):
            self.walk(node.func, depth)
            raise self.error(node, f"only named functions may be called, not "
                                   f"`{self.source(node.func)}`",
                             hint=f"allowed functions: {', '.join(sorted(FUNCTIONS))}")
        name = node.func.id
        if name not in FUNCTIONS and name not in self.ctx.functions:
            allowed = sorted(FUNCTIONS) + sorted(self.ctx.functions)
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean `{close[0]}`?" if close else "define it under [functions]"
            raise self.error(node, f"function `{name}` is not allowed; allowed functions: "
                                   f"{', '.join(allowed)}", hint=hint)
        if node.keywords:
            raise self.error(node, f"keyword arguments are not allowed in `{name}(...)`",
                             hint="pass arguments by position")
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(arg, "unpacking (*) is not allowed in a formula")
            args.append(self.walk(arg, depth))
        if name in self.ctx.functions:
            return self.apply_elementwise(node, self.ctx.functions[name], args, 1)
        return FUNCTIONS[name](self, node, args)

    # -------------------------------------------------------------- functions
    def arity(self, node: ast.Call, args: list[Typed], low: int, high: int | None = None) -> None:
        high = low if high is None else high
        if not low <= len(args) <= high:
            name = node.func.id  # type: ignore[attr-defined]
            count = str(low) if low == high else f"{low} to {high}"
            raise self.error(node, f"`{name}` takes {count} argument(s), got {len(args)}")

    def constant(self, node: ast.Call, arg: Typed, what: str) -> sp.Expr:
        if not arg.expr.is_Number or arg.shape != ():
            raise self.error(node, f"{what} in `{self.source(node)}` must be a number constant")
        return arg.expr

    def apply_elementwise(self, node: ast.Call, fn: Callable, args: list[Typed], n: int,
                          extra: tuple = ()) -> Typed:
        self.arity(node, args, n)
        self.no_labels(node, *args)
        return Typed(fn(*(a.expr for a in args), *extra), args[0].shape, args[0].batched)

    def vector(self, node: ast.Call, arg: Typed) -> None:
        self.no_labels(node, arg)
        if len(arg.shape) != 1:
            raise self.error(node, f"`{self.source(node)}` needs a vector, got shape {arg.shape}")

    def mean(self, arg: Typed) -> Typed:
        size = math.prod(arg.shape)
        if arg.shape == ():
            return arg
        return Typed(SumAll(arg.expr) / size, (), arg.batched)

    def residual(self, node: ast.Call, args: list[Typed]) -> Typed:
        a, b = args[0], args[1]
        return self.elementwise(node, a, b, a.expr - b.expr)


def matmul(left: Typed, right: Typed, text: str, fail: Callable[[str], SpecError]) -> Typed:
    """Type ``left @ right`` with NumPy's rules for 1-D and 2-D operands."""
    a, b = left.shape, right.shape
    if not a or not b:
        raise fail(f"`{text}` multiplies a scalar with @; use * for scalars")
    inner_a = a[-1]
    inner_b = b[0]
    if inner_a != inner_b:
        raise fail(f"shape mismatch in `{text}`: {a} @ {b} (inner sizes {inner_a} and {inner_b} "
                   f"differ)")
    shape = a[:-1] + b[1:]
    batched = left.batched or right.batched
    if batched and len(shape) == 2:
        raise fail(f"`{text}` makes a per-sample matrix {shape}; per-sample values must be "
                   f"scalars or vectors")
    return Typed(MatProd(left.expr, right.expr), shape, batched)


def _unary(cls: Callable) -> Callable:
    return lambda w, node, args: w.apply_elementwise(node, cls, args, 1)


def _sqrt(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    return w.apply_elementwise(node, sp.sqrt, args, 1)


def _square(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    return w.apply_elementwise(node, lambda u: u**2, args, 1)


def _leaky_relu(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 1, 2)
    alpha = w.constant(node, args[1], "the slope") if len(args) == 2 else sp.Float("0.01")
    return w.apply_elementwise(node, LeakyRelu, args[:1], 1, (alpha,))


def _sum(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 1)
    w.no_labels(node, *args)
    (a,) = args
    return a if a.shape == () else Typed(SumAll(a.expr), (), a.batched)


def _mean(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 1)
    w.no_labels(node, *args)
    return w.mean(args[0])


def _dot(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 2)
    for arg in args:
        w.vector(node, arg)
    return matmul(args[0], args[1], w.source(node), lambda m: w.error(node, m))


def _softmax(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 1)
    w.vector(node, args[0])
    return Typed(Softmax(args[0].expr), args[0].shape, args[0].batched)


def _logsumexp(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 1)
    w.vector(node, args[0])
    w.ctx.rules.add("logsumexp")
    return Typed(LogSumExp(args[0].expr), (), args[0].batched)


def _mse(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 2)
    r = w.residual(node, args)
    return w.mean(Typed(r.expr**2, r.shape, r.batched))


def _mae(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 2)
    r = w.residual(node, args)
    return w.mean(Typed(sp.Abs(r.expr), r.shape, r.batched))


def _huber(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 2, 3)
    delta = w.constant(node, args[2], "delta") if len(args) == 3 else sp.Integer(1)
    if not delta > 0:
        raise w.error(node, "huber's delta must be positive")
    r = w.residual(node, args[:2])
    return w.mean(Typed(Huber(r.expr, delta), r.shape, r.batched))


def _bce_with_logits(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 2)
    z, y = args
    w.ctx.rules.add("sigmoid_bce")
    per = w.elementwise(node, z, y, Softplus(z.expr) - y.expr * z.expr)
    return w.mean(per)


def _binary_cross_entropy(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 2)
    p, y = args
    if isinstance(p.expr, Sigmoid):
        return _bce_with_logits(w, node, [Typed(p.expr.args[0], p.shape, p.batched), y])
    per = w.elementwise(node, p, y, -y.expr * sp.log(p.expr) - (1 - y.expr) * sp.log(1 - p.expr))
    return w.mean(per)


def _softmax_cross_entropy(w: _Walker, node: ast.Call, args: list[Typed]) -> Typed:
    w.arity(node, args, 2)
    z, y = args
    w.vector(node, z)
    classes = z.shape[0]
    w.ctx.rules.update({"softmax_cross_entropy", "logsumexp"})
    if y.classes is not None:
        if y.classes != classes:
            raise w.error(node, f"`{w.source(node)}`: the logits have {classes} entries but the "
                                f"labels have {y.classes} classes")
        return Typed(LogSumExp(z.expr) - Pick(z.expr, y.expr), (), True)
    if y.shape != z.shape:
        raise w.error(node, f"shape mismatch in `{w.source(node)}`: logits {z.shape} and "
                            f"targets {y.shape}",
                      hint="the target must be one-hot of the same length, or declared "
                           "`{ classes = N }` for integer labels")
    return Typed(LogSumExp(z.expr) - MatProd(y.expr, z.expr), (), z.batched or y.batched)


FUNCTIONS: dict[str, Callable[[_Walker, ast.Call, list[Typed]], Typed]] = {
    "exp": _unary(sp.exp), "log": _unary(sp.log), "sqrt": _sqrt, "abs": _unary(sp.Abs),
    "square": _square, "sin": _unary(sp.sin), "cos": _unary(sp.cos), "tanh": _unary(sp.tanh),
    "sigmoid": _unary(Sigmoid), "relu": _unary(Relu), "leaky_relu": _leaky_relu,
    "softplus": _unary(Softplus), "elu": _unary(Elu), "gelu": _unary(Gelu),
    "sum": _sum, "mean": _mean, "dot": _dot, "softmax": _softmax, "logsumexp": _logsumexp,
    "mse": _mse, "mae": _mae, "huber": _huber, "binary_cross_entropy": _binary_cross_entropy,
    "bce_with_logits": _bce_with_logits, "softmax_cross_entropy": _softmax_cross_entropy,
}
"""The whitelist: every function a formula may call (besides the spec's own [functions])."""

LOSS_FUNCTIONS = ("mse", "mae", "huber", "binary_cross_entropy", "bce_with_logits",
                  "softmax_cross_entropy")
