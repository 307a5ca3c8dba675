"""Expanded scalar gradients printed in the document parse back to the derived expressions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy as sp

from symbolic import derive, load_spec
from symbolic.functions import MatProd, Sigmoid
from symbolic.latex import expanded_applies, expanded_gradients, latex_document

# SymPy's LaTeX parser needs the lark package (a test dependency)
pytest.importorskip("lark")

ROOT = Path(__file__).resolve().parents[1]
SCALAR_PARAM = ["curve_fit", "s1_linear_regression", "logistic_regression"]


def example(name: str):
    return derive(load_spec(ROOT / "examples" / f"{name}.toml"))


_INDEXED = re.compile(r"([A-Za-z]+)_\{([a-z]+)\}\Z")


def _indexed(expr: sp.Expr) -> sp.Expr:
    """Symbols the parser made from subscripts (x_{ik}) as indexed objects x[i, k]; e → E."""
    subs = {}
    for s in expr.free_symbols:
        m = _INDEXED.match(s.name)
        if m:
            subs[s] = sp.IndexedBase(m.group(1))[tuple(sp.Symbol(c) for c in m.group(2))]
        elif s.name == "e":
            subs[s] = sp.E
        else:
            subs[s] = sp.Symbol(s.name)
    return expr.xreplace(subs)


def _expected(d, expr: sp.Expr, j: sp.Symbol | None) -> sp.Expr:
    """The derived per-sample expression with sample i and entry j made explicit (independent
    of the printer): batched x → x[i], vector x → x[i, j], w·x → Σ_k w[k] x[i, k]."""
    i, k = sp.Symbol("i"), sp.Symbol("k")

    def element(sym: sp.Symbol, index: sp.Symbol | None) -> sp.Expr:
        v = d.values[str(sym)]
        idx = ([i] if v.batched else []) + ([index] if v.shape else [])
        return sp.IndexedBase(v.name)[tuple(idx)] if idx else sp.Symbol(v.name)

    def walk(e: sp.Expr, index: sp.Symbol | None) -> sp.Expr:
        if e.is_Symbol:
            return element(e, index)
        if isinstance(e, MatProd):
            a, b = e.args
            size = d.values[str(a if a.is_Symbol else b)].shape[0]
            return sp.Sum(walk(a, k) * walk(b, k), (k, 1, size))
        if isinstance(e, Sigmoid):
            return 1 / (1 + sp.exp(-walk(e.args[0], index)))
        if not e.args:
            return e
        return e.func(*(walk(a, index) for a in e.args))

    return walk(expr, j)


def _readings(text: str) -> list[sp.Expr]:
    """Every reading of ``text`` by SymPy's LaTeX parser (lark returns a tree when ambiguous)."""
    from sympy.parsing.latex import parse_latex

    parsed = parse_latex(text, backend="lark")
    if isinstance(parsed, sp.Basic):
        return [parsed]
    return [child for child in parsed.children if isinstance(child, sp.Basic)]


def _summand(expr: sp.Expr, i: sp.Symbol) -> tuple[sp.Expr, sp.Expr]:
    """(factor, body) of factor · Σ_{i=1}^{n} body."""
    (outer,) = [s for s in expr.atoms(sp.Sum) if s.limits[0][0] == i]
    return sp.simplify(expr / outer), outer.function


@pytest.mark.parametrize("name", SCALAR_PARAM)
def test_expanded_gradients_parse_back_to_the_derived_ones(name):
    d = example(name)
    assert expanded_applies(d)
    eqs = expanded_gradients(d)
    assert len(eqs) == len(d.grads)
    text = latex_document(d)
    n, i = sp.Symbol("n"), sp.Symbol("i")
    for param, eq in zip(d.grads, eqs):
        assert eq.rhs in text
        j = sp.Symbol("j") if d.values[param].shape else None
        want = sp.Sum(_expected(d, d.expanded_grad(param), j), (i, 1, n)) / n
        want_factor, want_body = _summand(want, i)
        readings = _readings(eq.rhs)
        assert readings, eq.rhs
        for reading in readings:          # an ambiguous formula must mean the same every way
            got_factor, got_body = _summand(_indexed(reading), i)
            # factor · Σ_i body: the same sum when factor · body agree for every sample i
            diff = (got_factor * got_body - want_factor * want_body).doit()
            assert sp.simplify(diff) == 0, (param, eq.rhs, reading)
