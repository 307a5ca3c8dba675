"""The installed `symgrad` command: derive, check, generate, latex, graph and their errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("symgrad")
    command = [exe] if exe else [sys.executable, "-m", "symgrad.cli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
                          timeout=600)


def test_help_explains_every_command(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("derive", "check", "generate", "latex", "graph", "train", "demo"):
        assert command in result.stdout
    sub = run("check", "--help", cwd=tmp_path)
    assert "finite differences" in sub.stdout and "--reference" in sub.stdout


def test_derive_prints_the_chain_rule(tmp_path):
    result = run("derive", EXAMPLES / "s2_mnist_mlp.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "z1 = b1 + W1 @ x" in out
    assert "delta_z1 = delta_h*step(z1)" in out
    assert "grad_W1 = outer(delta_z1, x)" in out
    assert "softmax(z) − y" in out
    assert list(tmp_path.iterdir()) == []


def test_derive_expanded_gives_scalar_formulas(tmp_path):
    result = run("derive", EXAMPLES / "curve_fit.toml", "--expanded", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "∂ℓ/∂k = -a*t*(2*a*exp(-k*t) + 2*c - 2*y)*exp(-k*t)" in result.stdout


def test_check_reference_passes_and_writes_json(tmp_path):
    result = run("check", EXAMPLES / "tanh_three_layer.toml", "--reference", "--json",
                 tmp_path / "report.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "overall: ok" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert {row["name"] for row in report["rows"]} == {"W1", "b1", "W2", "b2", "W3", "b3"}


def test_check_and_generate_run_on_the_generated_module(tmp_path):
    spec = EXAMPLES / "s1_linear_regression.toml"
    checked = run("check", spec, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "generated module" in checked.stdout and "overall: ok" in checked.stdout
    out = tmp_path / "models"
    made = run("generate", spec, "-o", out, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    module = out / "s1_linear_regression.py"
    fresh = module.read_text().replace(str(ROOT) + "/", "")
    assert fresh == (ROOT / "generated" / module.name).read_text()
    assert json.loads((out / "s1_linear_regression.check.json").read_text())


def test_latex_and_graph_write_their_files(tmp_path):
    spec = EXAMPLES / "s5_tiny_mlp.toml"
    latex = run("latex", spec, "-o", tmp_path / "s5.tex", cwd=tmp_path)
    assert latex.returncode == 0, latex.stderr
    text = (tmp_path / "s5.tex").read_text()
    assert r"\documentclass" in text and r"\odot" in text
    md = run("latex", spec, "-o", tmp_path / "s5.md", "--md", "--no-check", cwd=tmp_path)
    assert md.returncode == 0, md.stderr
    assert "$$" in (tmp_path / "s5.md").read_text()
    graph = run("graph", spec, "-o", tmp_path / "s5.dot", cwd=tmp_path)
    assert graph.returncode == 0, graph.stderr
    assert (tmp_path / "s5.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("command", ["derive", "check", "generate", "latex", "graph"])
def test_a_bad_spec_is_one_line_and_writes_nothing(command, tmp_path):
    args = {"latex": ["-o", tmp_path / "d.tex"], "graph": ["-o", tmp_path / "g.dot"],
            "generate": ["-o", tmp_path / "gen"]}.get(command, [])
    spec = ROOT / "tests/data/specs/bad_import.toml"
    result = run(command, spec, *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "function `__import__` is not allowed" in lines[0]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "derive", ROOT / "tests/data/specs/bad_import.toml", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "SpecError" in result.stderr
