"""No source file of symgrad evaluates strings or unpickles data (an AST walk of the package)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for package in ("symbolic", "codegen", "symgrad")
                 for p in (ROOT / package).rglob("*.py"))

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "lambdify", "loads"}
SAFE_PREFIXES = ("json.", "tomllib.", "re.")
STRING_PARSERS = {"sympify", "parse_expr", "S", "parse_latex"}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _dotted(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_dotted(func.value)}.{func.attr}"
    return _name(func)


def problems(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name, dotted = _name(node.func), _dotted(node.func)
            if name in FORBIDDEN_CALLS and not dotted.startswith(SAFE_PREFIXES):
                found.append(f"line {node.lineno}: call of {dotted}")
            if "pickle" in dotted:
                found.append(f"line {node.lineno}: pickle use {dotted}")
            if name in STRING_PARSERS and not all(isinstance(a, ast.Constant) and
                                                  not isinstance(a.value, str) for a in node.args):
                found.append(f"line {node.lineno}: {dotted} applied to a non-constant or string")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant)
                                                     and kw.value.value is False):
                    found.append(f"line {node.lineno}: allow_pickle is not False")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "marshal", "shelve", "dill") for n in names):
                found.append(f"line {node.lineno}: imports a pickle-like module")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_never_evaluates_strings_or_unpickles(path):
    assert problems(ast.parse(path.read_text(), filename=str(path))) == []


@pytest.mark.parametrize("snippet", [
    "eval(text)", "exec(code)", "pickle.loads(blob)", "np.load(f, allow_pickle=True)",
    "sympy.sympify(user)", "parse_expr(s)", "import pickle", "lambdify(x, e)",
    "np.load(f, allow_pickle=flag)",
])
def test_the_walker_catches_each_forbidden_form(snippet):
    assert problems(ast.parse(snippet)) != []


def test_sources_were_found():
    assert len(SOURCES) > 10
