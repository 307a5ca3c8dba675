"""How the names of a spec are written in math: the seed documents' notation.

One place decides that parameter ``W1`` is written W⁽¹⁾, node ``z1`` z⁽¹⁾, ``yhat`` ŷ, the
per-sample loss ℓ, ``delta_z1`` (∂ℓ/∂z1) δ⁽¹⁾ and the batch matrix of the rows x_i is X. The
LaTeX printer (:mod:`symbolic.latex`) and the graph (:mod:`symbolic.graph`) both use it, so a
figure and a document name every tensor the same way.

Equation tags live here too: forward steps are numbered 1, 2, ... in order and the backward
steps continue the count (:func:`equation_tags`); the generated code tags its blocks the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .derive import LOSS, ACTIVATIONS, Derivation, Step

GREEK = frozenset({
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi",
    "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi",
    "Omega",
})

_GREEK_UNICODE = dict(zip(
    ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
     "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi",
     "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi",
     "Omega"],
    "αβγδεζηθικλμνξπρστυφχψωΓΔΘΛΞΠΣΥΦΨΩ"))

_LAYERED = re.compile(r"([A-Za-z]+?)_?(\d+)\Z")
_HAT = re.compile(r"([A-Za-z]+?)_?hat\Z")


def equation_tags(d: Derivation) -> dict[str, int]:
    """The equation number of every step: forward steps 1, 2, ..., then the backward steps.

    The LaTeX document writes ``\\tag{k}`` on the equation of each step and the generated code
    writes ``(k)`` above the block that computes it, so a reader can find one from the other.
    """
    return {step.name: k for k, step in enumerate([*d.forward, *d.backward], start=1)}


@dataclass(frozen=True)
class Name:
    """A name written in math: ``base^{sup}_{sub}`` (LaTeX) and its plain-text pieces."""

    base: str       # LaTeX, e.g. "W", r"\hat{y}", r"\delta", r"\mathit{logits}"
    sup: str = ""   # LaTeX, e.g. "(1)"
    sub: str = ""   # LaTeX, e.g. r"\mathrm{out}"
    text: str = ""  # plain Unicode for figures, e.g. "W(1)" is written with <SUP> in HTML
    text_sup: str = ""
    text_sub: str = ""

    def latex(self, index: str = "", *, transposed: bool = False) -> str:
        """``base^{sup}_{sub,index}``; ``transposed`` adds ᵀ (in parentheses after a sup)."""
        sub = ",".join(p for p in (self.sub, index) if p) if self.sub else index
        out = self.base
        if self.sup:
            out += f"^{{{self.sup}}}"
        if sub:
            out += f"_{{{sub}}}"
        if transposed:
            out = f"({out})^{{\\top}}" if self.sup else out + r"^{\top}"
        return out

    @property
    def plain(self) -> str:
        """Unicode text: W(1), ŷ, δ(2), x_in."""
        out = self.text
        if self.text_sup:
            out += f"({self.text_sup})" if not self.text_sup.startswith("(") else self.text_sup
        if self.text_sub:
            out += f"_{self.text_sub}"
        return out


def _letters(word: str) -> tuple[str, str]:
    """LaTeX and Unicode for a bare word: x, \\alpha, \\mathit{logits}."""
    if word in GREEK:
        return f"\\{word}", _GREEK_UNICODE[word]
    if len(word) == 1:
        return word, word
    return rf"\mathit{{{word}}}", word


def base_name(name: str, *, layered: bool = True) -> Name:
    """The math name of a spec name (an ASCII identifier)."""
    if name == LOSS:
        return Name(r"\ell", text="ℓ")
    hat = _HAT.match(name)
    if hat and len(hat.group(1)) == 1:
        return Name(rf"\hat{{{hat.group(1)}}}", text=hat.group(1) + "\u0302")
    if layered:
        match = _LAYERED.match(name)
        if match:
            base, text = _letters(match.group(1))
            return Name(base, f"({match.group(2)})", text=text, text_sup=f"({match.group(2)})")
    if "_" in name:
        head, _, tail = name.partition("_")
        base, text = _letters(head)
        escaped = tail.replace("_", "\\_")
        return Name(base, sub=rf"\mathrm{{{escaped}}}", text=text, text_sub=tail)
    base, text = _letters(name)
    return Name(base, text=text)


class Notation:
    """The math names of every tensor of one derivation, per sample and for the batch."""

    def __init__(self, d: Derivation):
        self.d = d
        self.steps: dict[str, Step] = {s.name: s for s in [*d.forward, *d.backward]}
        self.names: dict[str, Name] = {}
        for value in d.values.values():
            layered = value.kind in ("param", "node")
            if value.kind in ("delta", "grad"):
                continue
            self.names[value.name] = base_name(value.name, layered=layered)
        for value in d.values.values():
            if value.kind == "delta":
                self.names[value.name] = self._delta_name(value.name)

    # ------------------------------------------------------------------ deltas
    def layer_delta(self, node: str) -> int | None:
        """l when ∂ℓ/∂node is written δ⁽ˡ⁾: node is a pre-activation z⁽ˡ⁾ or a plain line."""
        step = self.steps.get(node)
        if step is None or step.layer is None:
            return None
        if step.role == "pre":
            return step.layer
        if step.role == "line" and not isinstance(step.expr, ACTIVATIONS):
            return step.layer
        return None

    def _delta_name(self, delta: str) -> Name:
        node = self.steps[delta].of or delta.removeprefix("delta_")
        layer = self.layer_delta(node)
        if layer is not None:
            return Name(r"\delta", f"({layer})", text="δ", text_sup=f"({layer})")
        of = self.names[node]
        return Name(rf"\frac{{\partial \ell}}{{\partial {of.latex()}}}",
                    text=f"∂ℓ/∂{of.plain}")

    def is_fraction(self, name: str) -> bool:
        return self.names[name].base.startswith(r"\frac")

    # ------------------------------------------------------------------ access
    def latex(self, name: str, index: str = "", *, transposed: bool = False) -> str:
        return self.names[name].latex(index, transposed=transposed)

    def grad_latex(self, param: str, *, batch: bool = False, index: str = "") -> str:
        """∂ℓ/∂θ (one sample) or ∂C/∂θ (the batch cost)."""
        top = "C" if batch else r"\ell"
        return rf"\frac{{\partial {top}}}{{\partial {self.latex(param, index)}}}"

    def matrix(self, name: str) -> str | None:
        """The batch matrix (rows = samples) of a batched tensor: X, H, Z⁽¹⁾, Δ⁽¹⁾, Ŷ."""
        n = self.names[name]
        if n.base == r"\delta":
            return rf"\Delta^{{{n.sup}}}" if n.sup else r"\Delta"
        if n.base.startswith(r"\hat{"):
            return rf"\hat{{{n.base[5:-1].upper()}}}"
        if len(n.base) == 1 and n.base.isalpha():
            upper = n.base.upper()
            taken = {self.names[v].latex() for v in self.names
                     if self.d.values[v].kind == "param"}
            if upper == n.base or Name(upper, n.sup, n.sub).latex() in taken:
                upper = rf"\mathbf{{{n.base}}}"
            return Name(upper, n.sup, n.sub).latex()
        return None
