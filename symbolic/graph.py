"""The computation graph of a derivation (the seed's 计算图) as Graphviz DOT, SVG, PNG or PDF.

Nodes are the inputs, the target, the parameters and every forward step; solid edges carry the
forward values, dashed red edges the error signals flowing back (δ into a node, ∂ℓ/∂θ into a
parameter). The DOT text is deterministic: nodes and edges in the derivation's own order.
Rendering needs Graphviz's ``dot`` program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html import escape
from pathlib import Path

import sympy as sp
from sympy.printing.str import StrPrinter

from .derive import Derivation
from .functions import MatProd
from .notation import Name, Notation, equation_tags

FORMATS = ("dot", "svg", "png", "pdf")

FORWARD_COLOR = "#34495e"
BACKWARD_COLOR = "#c0392b"
FILL = {"input": "#e3f2fd", "target": "#e8f5e9", "param": "#fff3cd", "node": "#ffffff",
        "loss": "#fdecea"}


class GraphError(Exception):
    """The graph could not be drawn or written; the message is one line with the fix."""


def _html_name(name: Name) -> str:
    text = f"<I>{escape(name.text)}</I>" if len(name.text) == 1 or name.text in "ŷ" else escape(
        name.text)
    if name.text.endswith("\u0302"):
        text = f"<I>{escape(name.text)}</I>"
    if name.text_sup:
        text += f"<SUP>{escape(name.text_sup)}</SUP>"
    if name.text_sub:
        text += f"<SUB>{escape(name.text_sub)}</SUB>"
    return text


class _HtmlPrinter(StrPrinter):
    """Short formulas for node labels, as Graphviz HTML: W<SUP>(1)</SUP> x + b<SUP>(1)</SUP>."""

    def __init__(self, notation: Notation):
        super().__init__({"order": None})
        self.notation = notation
        self.by_symbol = {v.symbol: v.name for v in notation.d.values.values()}

    def _print_Symbol(self, expr):
        return _html_name(self.notation.names[self.by_symbol[expr]])

    def _print_Add(self, expr, order=None):
        terms = sorted(expr.args, key=lambda t: (t.could_extract_minus_sign(),
                                                 not t.has(MatProd), str(t)))
        out = ""
        for k, term in enumerate(terms):
            neg = term.could_extract_minus_sign()
            text = self._print(-term if neg else term)
            if isinstance(-term if neg else term, sp.Add):
                text = f"({text})"
            out += ("−" if neg else "") if k == 0 else (" − " if neg else " + ")
            out += text
        return out

    def _print_Mul(self, expr):
        coeff, rest = expr.as_coeff_Mul()
        sign = ""
        if coeff < 0:
            sign, coeff = "−", -coeff
        factors = [self.parenthesize(a, 45) for a in sp.Mul.make_args(rest)]
        lead = "" if coeff == 1 else self._print(coeff) + " "
        return sign + lead + " ".join(factors)

    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        return f"{self.parenthesize(base, 60)}<SUP>{self._print(e)}</SUP>"

    def _print_MatProd(self, expr):
        a, b = (self.parenthesize(x, 45) for x in expr.args)
        if len(self.notation.d.shape_of(expr.args[0])) == 1:     # uᵀv and uᵀW
            a += "<SUP>T</SUP>"
        return f"{a} {b}"

    def _print_Transposed(self, expr):
        return f"{self.parenthesize(expr.args[0], 1000)}<SUP>T</SUP>"

    def _print_Pick(self, expr):
        return f"{self._print(expr.args[0])}<SUB>{self._print(expr.args[1])}</SUB>"

    def _print_SumAll(self, expr):
        return f"Σ({self._print(expr.args[0])})"

    def _print_Sigmoid(self, expr):
        return f"σ({self._print(expr.args[0])})"

    def _print_Exp1(self, expr):
        return "e"

    def _print_Function(self, expr):
        name = {"LogSumExp": "logsumexp", "LeakyRelu": "leaky_relu"}.get(
            type(expr).__name__, type(expr).__name__.lower())
        return f"{escape(name)}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Float(self, expr):
        return f"{float(expr):g}"


def graph_dot(d: Derivation, *, rankdir: str = "TB") -> str:
    """The computation graph of ``d`` as DOT text (deterministic)."""
    notation = Notation(d)
    tags = equation_tags(d)
    printer = _HtmlPrinter(notation)
    order = list(d.values)
    steps = {s.name: s for s in d.forward}
    lines = [
        f'digraph "{d.spec.name}" {{',
        f'  graph [rankdir={rankdir}, nodesep=0.3, ranksep=0.4, fontname="DejaVu Sans", '
        'fontsize=12, bgcolor="white", pad=0.1];',
        '  node [fontname="DejaVu Sans", fontsize=12, penwidth=1.2, color="#34495e"];',
        f'  edge [fontname="DejaVu Sans", fontsize=11, color="{FORWARD_COLOR}", arrowsize=0.7];',
    ]

    def shape_text(shape: tuple, classes: int | None) -> str:
        if classes:
            return f"label in 0..{classes - 1}"
        return "×".join(map(str, shape)) if shape else "scalar"

    used = set()
    for step in d.forward:
        used |= {str(s) for s in step.expr.free_symbols}
    for name in order:
        v = d.values[name]
        if v.kind in ("delta", "grad"):
            continue
        if v.kind in ("input", "target", "param") and name not in used:
            continue
        title = _html_name(notation.names[name])
        small = f'<FONT POINT-SIZE="10" COLOR="#555555">{escape(shape_text(v.shape, v.classes))}'
        if name in steps:
            step = steps[name]
            formula = printer.doprint(step.expr)
            label = (f"<{title} = {formula}<BR/>{small} · ({tags[name]})</FONT>>")
            kind = "loss" if step.role == "loss" else "node"
            shape = "ellipse"
        else:
            label = f"<{title}<BR/>{small}</FONT>>"
            kind = v.kind
            shape = "box"
        style = '"rounded,filled"' if shape == "box" else "filled"
        lines.append(f'  "{name}" [shape={shape}, style={style}, fillcolor="{FILL[kind]}", '
                     f"label={label}];")
    lines.append("  // forward: values flow to the loss")
    for step in d.forward:
        for name in order:
            if d.values[name].symbol in step.expr.free_symbols:
                lines.append(f'  "{name}" -> "{step.name}";')
    lines.append("  // backward: error signals flow from the loss to the parameters")
    backward = {s.of: s for s in d.backward}
    for step in reversed(d.forward):
        for name in order:
            if d.values[name].symbol not in step.expr.free_symbols or name not in backward:
                continue
            signal = backward[name]
            label = _html_name(notation.names[signal.name]) if signal.role == "delta" else (
                f"∂ℓ/∂{_html_name(notation.names[name])}")
            if signal.role == "delta" and notation.is_fraction(signal.name):
                label = f"∂ℓ/∂{_html_name(notation.names[name])}"
            lines.append(f'  "{step.name}" -> "{name}" [style=dashed, color="{BACKWARD_COLOR}", '
                         f'fontcolor="{BACKWARD_COLOR}", constraint=false, '
                         f"label=<{label} ({tags[signal.name]})>];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_available() -> bool:
    return shutil.which("dot") is not None


def render_graph(d: Derivation, fmt: str, *, timeout: float = 60.0) -> bytes:
    """The graph rendered by Graphviz: ``fmt`` one of dot, svg, png, pdf."""
    if fmt not in FORMATS:
        raise GraphError(f"unknown graph format {fmt!r}; use one of {', '.join(FORMATS)}")
    text = graph_dot(d)
    if fmt == "dot":
        return text.encode("utf-8")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphError(f"Graphviz's `dot` program is not on PATH, so no .{fmt} can be drawn; "
                         "install graphviz (Debian: apt-get install graphviz) or write a .dot "
                         "file instead")
    extra = ["-Gdpi=150"] if fmt == "png" else []
    try:
        proc = subprocess.run([exe, f"-T{fmt}", *extra], input=text.encode("utf-8"),
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GraphError(f"dot took longer than {timeout:g} s to draw the graph") from None
    if proc.returncode != 0 or not proc.stdout:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GraphError(f"dot failed: {message[0] if message else 'no output'}; "
                         "please report it with the spec")
    return proc.stdout


def write_graph(d: Derivation, path: str | os.PathLike[str]) -> Path:
    """Write the computation graph to ``path``; the format comes from the suffix
    (.dot, .svg, .png, .pdf). Atomic: a temporary file, then os.replace."""
    from .latex import DocumentError, _check_target, atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise GraphError(f"cannot write {path}: unknown graph format {path.suffix or '(none)'};"
                         f" use one of {', '.join('.' + f for f in FORMATS)}")
    try:
        _check_target(path)
        data = render_graph(d, fmt)
        atomic_write(path, data)
    except DocumentError as exc:
        raise GraphError(str(exc)) from None
    return path

