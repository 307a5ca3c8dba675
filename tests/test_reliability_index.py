"""Every case of RELIABILITY_CASES.md (A1–F40) is marked on at least one test.

The marks are read from the source (AST), so a test counts only where it is written with
``@pytest.mark.reliability("<id>")``, ``@reliability("<id>")`` (an alias of it) or as
``pytest.param(..., marks=reliability("<id>"))``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SECTIONS = {"A": range(1, 12), "B": range(12, 15), "C": range(15, 22), "D": range(22, 28),
            "E": range(28, 35), "F": range(35, 41)}
ALL_CASES = {f"{letter}{n}" for letter, numbers in SECTIONS.items() for n in numbers}


def _is_reliability(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "reliability") or (
        isinstance(func, ast.Attribute) and func.attr == "reliability")


def marked_cases() -> dict[str, set[str]]:
    """case id -> the test files that mark it."""
    found: dict[str, set[str]] = {}
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _is_reliability(node.func):
                for arg in node.args:
                    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), \
                        f"{path.name}:{node.lineno}: reliability() takes literal case ids"
                    found.setdefault(arg.value, set()).add(path.name)
    return found


def test_case_count_is_forty():
    assert len(ALL_CASES) == 40


def test_every_marked_id_is_a_real_case():
    unknown = sorted(set(marked_cases()) - ALL_CASES)
    assert not unknown, f"unknown case ids (letter and number must match the file): {unknown}"


def test_every_case_is_marked_at_least_once():
    missing = sorted(ALL_CASES - set(marked_cases()), key=lambda c: (c[0], int(c[1:])))
    assert not missing, f"cases without a test marked @pytest.mark.reliability: {missing}"


def test_the_cases_file_still_has_forty_numbered_cases():
    cases = TESTS.parent.parent / "shared" / "RELIABILITY_CASES.md"
    if not cases.exists():  # the file lives beside the repository, not in it
        return
    numbers = [int(m) for m in re.findall(r"^(\d+)\. ", cases.read_text(), flags=re.M)]
    assert numbers == list(range(1, 41))
