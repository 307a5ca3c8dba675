"""The formula parser: a whitelist walk of the AST; nothing in a formula is ever executed."""

from __future__ import annotations

import time

import pytest
import sympy as sp

from symbolic import SpecError
from symbolic.functions import LogSumExp, MatProd, Softplus, Transposed
from symbolic.parser import MAX_FORMULA_LENGTH, ParseContext, Typed, parse_formula

X, W, B, Y = (sp.Symbol(n, real=True) for n in ("x", "W", "b", "y"))


def ctx() -> ParseContext:
    return ParseContext(names={"x": Typed(X, (3,), True), "W": Typed(W, (2, 3), False),
                               "b": Typed(B, (2,), False), "y": Typed(Y, (2,), True)})


def parse(text: str) -> Typed:
    return parse_formula(text, ctx())


def test_affine_layer_has_the_right_shape_and_structure():
    t = parse("relu(W @ x + b)")
    assert t.shape == (2,) and t.batched
    assert t.expr.args[0] == B + MatProd(W, X)


def test_transpose_and_matmul_shapes():
    assert parse("W.T").expr == Transposed(W)
    assert parse("W.T @ b").shape == (3,)
    assert parse("dot(x, x)").shape == ()
    assert parse("x.T").expr == X  # a vector's transpose is itself, as in NumPy


@pytest.mark.parametrize("text, construct", [
    ("W.__class__", "attribute `.__class__`"),
    ("x[0]", "indexing"),
    ("(lambda: 1)()", "lambda"),
    ("[v for v in x]", "comprehension"),
    ("f'{x}'", "f-string"),
    ("exp(x, base=2)", "keyword arguments"),
    ("x if x else b", "conditional"),
    ("x < b", "comparison"),
    ("x % 2", "operator `Mod`"),
    ("'text'", "constant 'text' is not a number"),
    ("W.T.T.real", "attribute `.real`"),
    ("getattr(x, 'T')", "function `getattr` is not allowed"),
])
@pytest.mark.reliability("A2")
def test_forbidden_constructs_are_named_with_a_column(text, construct):
    with pytest.raises(SpecError, match=construct) as info:
        parse(text)
    assert info.value.column is not None and info.value.column >= 1


@pytest.mark.reliability("A1")
def test_import_is_rejected_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=r"function `__import__` is not allowed; allowed functions: abs"):
        parse("__import__('os').system('touch PWNED')")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("text", ["x**9**9**9", "2**10**10", "x ** 65", "x ** -100"])
@pytest.mark.reliability("A4")
def test_huge_constant_exponents_are_rejected_fast(text):
    start = time.perf_counter()
    with pytest.raises(SpecError, match="exponent constant too large"):
        parse(text)
    assert time.perf_counter() - start < 1.0


@pytest.mark.reliability("A5")
def test_deep_nesting_and_huge_formulas_are_rejected_before_parsing():
    with pytest.raises(SpecError, match="too long|too deeply nested"):
        parse("(" * 10_000 + "x" + ")" * 10_000)
    with pytest.raises(SpecError, match="too deeply nested"):
        parse("(" * 900 + "x" + ")" * 900)
    with pytest.raises(SpecError, match=f"too long .*limit is {MAX_FORMULA_LENGTH}"):
        parse("x + " * 250_000 + "x")
    with pytest.raises(SpecError, match="too deep|too long"):
        parse("-" * 1900 + "x")


@pytest.mark.parametrize("char", ["\n", "\r", "\u2028", "\u202e", "\x00", "\uff37"])
@pytest.mark.reliability("A6")
@pytest.mark.reliability("A8")
def test_control_and_non_ascii_characters_are_rejected(char):
    with pytest.raises(SpecError, match=f"U\\+{ord(char):04X}"):
        parse(f"x{char} + x")


@pytest.mark.parametrize("text", ["x * 1e400", "x / 0", "x * 1e300 * 1e300"])
@pytest.mark.reliability("A11")
def test_non_finite_constants_are_rejected(text):
    with pytest.raises(SpecError, match="finite"):
        parse(text)


@pytest.mark.reliability("A9")
def test_shape_mismatch_names_both_shapes_and_the_subexpression():
    with pytest.raises(SpecError, match=r"shape mismatch in `W @ b`: \(2, 3\) @ \(2,\)"):
        parse("relu(W @ b) + x")
    with pytest.raises(SpecError, match=r"shape mismatch in `x \+ b`: \(3,\) and \(2,\)"):
        parse("x + b")


@pytest.mark.reliability("A3")
def test_unknown_names_list_the_declared_ones():
    with pytest.raises(SpecError, match=r"unknown name `W3`; declared names: W, b, x, y"):
        parse("W3 @ x")


@pytest.mark.reliability("D25")
def test_stable_rewrites_of_logs():
    rules: set[str] = set()
    c = ctx()
    c.rules = rules
    hand_written = parse_formula("-y*log(sigmoid(W @ x)) - (1 - y)*log(1 - sigmoid(W @ x))", c)
    z = MatProd(W, X)
    assert hand_written.expr == sp.expand(Y * Softplus(-z) + (1 - Y) * Softplus(z)) or \
        sp.simplify(hand_written.expr - (Y * Softplus(-z) + (1 - Y) * Softplus(z))) == 0
    assert "sigmoid_bce" in rules
    log_softmax = parse_formula("log(softmax(W @ x))", c)
    assert log_softmax.expr == z - LogSumExp(z)
    assert "log_softmax" in rules
