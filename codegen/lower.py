"""Lowering: a Derivation → the strings the module template needs (no decisions left for Jinja).

Three compiled functions are printed from the same steps:

* ``_forward`` — the forward steps up to the prediction (the last model line), array code;
* ``_loss``    — every forward step, then the batch loss, array code;
* ``_step``    — the training kernel: every forward and backward step as explicit loops over
  preallocated buffers (BLAS for large matrix products); see :mod:`codegen.kernel`.

``_loss`` and ``_step`` are independent printings of the same steps, so the finite-difference
check (which compares ``loss`` with the gradients of ``_step``) also cross-checks the two.

Inside one function, shared subexpressions are computed once:

1. a later step reuses an earlier step's value instead of recomputing its expression
   (tanh'(z2) = 1 − tanh²(z2) becomes ``1 - h2**2``; σ'(z) reuses σ(z));
2. a costly elementwise function or reduction that still occurs twice or more is hoisted into
   a named temporary (``sigmoid_z1``, ``logsumexp_z``) just before its first use;
3. softmax(u) next to logsumexp(u) is printed as ``exp(u − logsumexp_u)``.

Equation numbers (the ``# (k)`` tags) follow one rule, shared with the LaTeX document:
forward steps are numbered 1, 2, … in order (the loss step included), and backward steps
continue the count in their order. See :func:`equation_numbers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from symbolic.derive import Derivation, Step, shape_of
from symbolic.notation import equation_tags
from symbolic.functions import (
    Elu, Gelu, LogSumExp, Sigmoid, Softmax, Softplus, UserFunction,
)

from .kernel import Buffer, kernel
from .printers import CodegenError, FormulaPrinter, NumbaPrinter, display_name

HOISTABLE = (sp.exp, sp.log, sp.tanh, sp.sin, sp.cos, Sigmoid, Softplus, LogSumExp, Softmax,
             Gelu, Elu)
"""Functions worth computing once when an expression needs them twice or more."""


def equation_numbers(d: Derivation) -> dict[str, int]:
    """The equation number of every step: forward steps from 1 in order, then backward steps.

    The same rule as :func:`symbolic.notation.equation_tags` (the LaTeX document's ``\\tag{k}``).
    """
    return equation_tags(d)


# ------------------------------------------------------------------------------ strings


@dataclass(frozen=True)
class Block:
    """One numbered step as printed code: the formula comment and the lines implementing it."""

    tag: str
    formula: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ParamText:
    name: str
    arg: str  # the compiled functions' argument (``_scalar_b`` for a scalar stored as shape (1,))
    unpack: str  # "b = _b[0]" for scalars, "" otherwise
    shape: str  # repr of the public shape
    init: str  # the init_params expression
    init_note: str  # the init rule, for the comment
    grad: str  # name of the gradient variable
    l2: str  # the L2 coefficient of its gradient ("0.0" when not regularized)
    fused: bool  # _step updates it itself under gd/sgd (kernel.KernelText.fused)


@dataclass(frozen=True)
class ModuleText:
    """Everything the template prints, already formatted."""

    name: str
    source: str
    digest: str
    sympy_version: str
    equations: tuple[str, ...]
    params: tuple[ParamText, ...]
    param_names: str
    param_shapes: str
    param_inits: str
    param_l2: str  # repr of the tuple of the parameters' L2 coefficients (ParamText.l2)
    input_name: str
    target_name: str
    input_shape: str
    target_shape: str
    classes: str
    task: str
    l2: str
    train: str
    rules: str
    args: str  # "W1, b1, W2, b2"
    forward: tuple[Block, ...]
    forward_result: str
    loss: tuple[Block, ...]
    batch_loss: str
    kernel: tuple[str, ...]  # the body of _step (see codegen.kernel) up to the batch loss …
    kernel_after: tuple[str, ...]  # … and after it
    kernel_loss: str
    buffers: tuple[Buffer, ...]
    buffer_names: str  # "z1, a, ..." (a 1-tuple ends with a comma)
    grad_buffers: tuple[Buffer, ...]
    grad_names: str
    outer_kernel: bool  # whether _step calls _outer_acc
    transposed_products: bool  # whether _step calls _transpose_into
    feature_major: bool  # kernel.KernelText.feature_major
    prediction_is_scalar: str  # "True" / "False"
    target_prologue: str  # how Y becomes the target inside compiled code


# ------------------------------------------------------------------------------ lowering


def _expand_user(expr: sp.Expr) -> sp.Expr:
    while expr.has(UserFunction):
        expr = expr.replace(lambda e: isinstance(e, UserFunction), lambda e: e.expand_body())
    return expr


def _fn_name(node: sp.Expr) -> str:
    return {Sigmoid: "sigmoid", LogSumExp: "logsumexp", Softmax: "softmax", Softplus: "softplus",
            Gelu: "gelu", Elu: "elu"}.get(type(node), type(node).__name__.lower())


class _Lowerer:
    def __init__(self, d: Derivation):
        self.d = d
        self.numbers = equation_numbers(d)
        self.shapes = {v.symbol: v.shape for v in d.values.values()}
        self.formulas = FormulaPrinter(self.shapes)
        self.data_symbols = {d.symbol(d.spec.input_name), d.symbol(d.spec.target_name)}
        self.used_names = set(d.values)

    def formula(self, step: Step) -> str:
        lhs = display_name(step.name)
        rhs = self.formulas.doprint(step.expr)
        if step.role == "grad":
            extra = "mean over the batch"
            if step.of in self.d.l2_params:
                extra += f", + {self.d.spec.l2!r}·{step.of}"
            return f"{lhs} = {rhs}   ({extra})"
        return f"{lhs} = {rhs}"

    def fresh(self, base: str) -> str:
        name = base
        while name in self.used_names:
            name += "_"
        self.used_names.add(name)
        return name

    def shared(self, steps: list[Step]) -> list[sp.Expr]:
        """The steps' expressions, each reusing the values of earlier steps it contains."""
        exprs: list[sp.Expr] = []
        known: dict[sp.Expr, sp.Symbol] = {}
        for step in steps:
            expr = step.expr.xreplace(known)
            if not expr.is_Symbol and not expr.is_number and step.role != "grad":
                known.setdefault(step.expr, self.d.symbol(step.name))
            exprs.append(_expand_user(expr))
        return exprs

    def function(self, steps: list[Step]) -> tuple[list[Block], NumbaPrinter]:
        """Print ``steps`` as one compiled function's body, sharing subexpressions."""
        d = self.d
        exprs = self.shared(steps)

        counts: dict[sp.Expr, int] = {}
        softmax_args = set()
        for expr in exprs:
            for node in sp.preorder_traversal(expr):
                if isinstance(node, HOISTABLE):
                    counts[node] = counts.get(node, 0) + 1
                if isinstance(node, Softmax):
                    softmax_args.add(node.args[0])
        hoist = {node for node, c in counts.items() if c >= 2 and not isinstance(node, Softmax)}
        hoist |= {node for node in counts
                  if isinstance(node, LogSumExp) and node.args[0] in softmax_args}

        printer = NumbaPrinter(self.shapes, set(self.data_symbols))
        defined: dict[sp.Expr, sp.Symbol] = {}
        blocks = []
        saved_used = set(self.used_names)
        for step, expr in zip(steps, exprs):
            lines = []
            for node in sp.postorder_traversal(expr):
                if node in hoist and node not in defined:
                    arg = node.args[0]
                    base = f"{_fn_name(node)}_{arg.name}" if arg.is_Symbol else \
                        f"{_fn_name(node)}_{step.name}"
                    sym = sp.Symbol(self.fresh(base), real=True)
                    value = node.xreplace(defined)
                    self.declare(printer, sym, value)
                    lines.append(f"{sym.name} = {printer.statement(value)}")
                    defined[node] = sym
                    if isinstance(node, LogSumExp):
                        printer.lse[arg.xreplace(defined)] = sym.name
            body = expr.xreplace(defined)
            target = d.symbol(step.name)
            self.declare(printer, target, body)
            lines.append(f"{step.name} = {printer.statement(body)}")
            blocks.append(Block(f"({self.numbers[step.name]})", self.formula(step), tuple(lines)))
        self.used_names = saved_used  # temporaries are local to one function
        return blocks, printer

    def declare(self, printer: NumbaPrinter, sym: sp.Symbol, value: sp.Expr) -> None:
        printer.shapes[sym] = shape_of(value, printer.shapes)
        if printer.is_batched(value):
            printer.batched_symbols.add(sym)


def _init(p, fan_in: int, fan_out: int) -> tuple[str, str]:
    """The init_params expression of one parameter: the rule of symbolic.verify.init_point."""
    shape = repr(tuple(p.shape))
    if isinstance(p.init, float):
        return f"np.full({shape}, {p.init!r}, dtype)", f"constant {p.init!r}"
    if p.init == "zeros":
        return f"np.zeros({shape}, dtype)", "zeros"
    if p.init == "he":
        std = math.sqrt(2.0 / fan_in)
        return (f"np.asarray(rng.normal(0.0, {std!r}, {shape}), dtype)",
                f"he: N(0, 2/fan_in), fan_in = {fan_in}")
    if p.init == "lecun":
        std = math.sqrt(1.0 / fan_in)
        return (f"np.asarray(rng.normal(0.0, {std!r}, {shape}), dtype)",
                f"lecun: N(0, 1/fan_in), fan_in = {fan_in}")
    if p.init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return (f"np.asarray(rng.uniform({-limit!r}, {limit!r}, {shape}), dtype)",
                f"glorot: U(±√(6/(fan_in + fan_out))), fan_in = {fan_in}, fan_out = {fan_out}")
    return f"np.asarray(rng.normal(0.0, 0.01, {shape}), dtype)", f"{p.init}: N(0, 0.01²)"


def _names(buffers: tuple[Buffer, ...]) -> str:
    text = ", ".join(b.name for b in buffers)
    return text + "," if len(buffers) == 1 else text


def lower(d: Derivation, source: str) -> ModuleText:
    """All strings of the generated module for derivation ``d`` (``source``: the spec path)."""
    spec = d.spec
    low = _Lowerer(d)
    pred_index = next(i for i, s in enumerate(d.forward) if s.name == d.prediction)
    target = d.symbol(spec.target_name)
    for step in d.forward[:pred_index + 1]:
        if target in step.expr.free_symbols:
            raise CodegenError(f"model line `{step.name}` uses the target `{spec.target_name}`; "
                               f"predictions cannot depend on targets")
    forward, fprinter = low.function(d.forward[:pred_index + 1])
    loss, _ = low.function(d.forward)
    steps = [*d.forward, *d.backward]
    kern = kernel(d, list(zip(steps, low.shared(steps))),
                  {s.name: f"({low.numbers[s.name]})" for s in steps},
                  {s.name: low.formula(s) for s in steps})

    params = []
    for p in spec.params:
        fan_in = p.shape[-1] if p.shape else 1
        fan_out = p.shape[0] if p.shape else 1
        init, note = _init(p, fan_in, fan_out)
        arg = p.name if p.shape else f"_scalar_{p.name}"  # not `_mu`: _fit_epochs has one
        params.append(ParamText(p.name, arg, f"{p.name} = {arg}[0]" if not p.shape else "",
                                repr(tuple(p.shape)), init, note, f"grad_{p.name}",
                                repr(float(spec.l2) if p.name in d.l2_params else 0.0),
                                p.name in kern.fused))

    loss_name = d.forward[-1].name
    batch_loss, kernel_loss = f"np.sum({loss_name})*inv_n", "_total/n"
    if d.l2_params:
        squares = " + ".join(f"_sumsq({name})" for name in d.l2_params)
        batch_loss += f" + _F({spec.l2 / 2!r})*({squares})"
        kernel_loss += f" + {spec.l2 / 2!r}*({squares})"

    train = spec.train
    train_text = (f"{{'optimizer': {train.optimizer!r}, 'lr': {train.lr!r}, "
                  f"'epochs': {train.epochs!r}, 'batch_size': {train.batch_size!r}}}")
    equations = tuple(f"({low.numbers[s.name]}) {low.formula(s)}" for s in d.forward)
    import sympy
    return ModuleText(
        name=spec.name,
        source=source,
        digest=spec.digest,
        sympy_version=sympy.__version__,
        equations=equations,
        params=tuple(params),
        param_names=repr(tuple(p.name for p in spec.params)),
        param_shapes=repr(tuple(tuple(p.shape) for p in spec.params)),
        param_inits=repr(tuple(p.init for p in spec.params)),
        param_l2=repr(tuple(float(p.l2) for p in params)),
        input_name=spec.input_name,
        target_name=spec.target_name,
        input_shape=repr(tuple(spec.input_shape)),
        target_shape=repr(tuple(spec.target_shape)),
        classes=repr(spec.classes),
        task=repr(d.task),
        l2=repr(float(spec.l2)),
        train=train_text,
        rules=repr(tuple(r.name for r in d.rules)),
        args=", ".join(p.arg for p in params),
        forward=tuple(forward),
        forward_result=d.prediction,
        loss=tuple(loss),
        batch_loss=batch_loss,
        kernel=kern.lines,
        kernel_after=kern.after,
        kernel_loss=kernel_loss,
        buffers=kern.buffers,
        buffer_names=_names(kern.buffers),
        grad_buffers=kern.grads,
        grad_names=_names(kern.grads),
        outer_kernel=bool(kern.fused),
        transposed_products=any(b.max_rows for b in kern.buffers),
        feature_major=kern.feature_major,
        prediction_is_scalar=repr(d.values[d.prediction].shape == ()),
        target_prologue=f"{spec.target_name} = Y",
    )
