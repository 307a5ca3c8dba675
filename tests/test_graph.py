"""The computation graph: deterministic DOT, forward and δ edges, rendering and writing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from symbolic import derive, load_spec
from symbolic.graph import GraphError, graph_dot, render_graph, write_graph
from symbolic.notation import equation_tags

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


@pytest.fixture(scope="module")
def s2():
    return derive(load_spec(ROOT / "examples" / "s2_mnist_mlp.toml"))


def edges(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    forward, backward = [], []
    for m in re.finditer(r'^  "(\w+)" -> "(\w+)"( \[.*\])?;$', text, re.M):
        if m.group(3) and "dashed" in m.group(3):
            backward.append((m.group(1), m.group(2), m.group(3)))
        else:
            forward.append((m.group(1), m.group(2)))
    return forward, backward


def test_forward_and_backward_edges(s2):
    text = graph_dot(s2)
    forward, backward = edges(text)
    assert forward == [("x", "z1"), ("W1", "z1"), ("b1", "z1"), ("z1", "h"), ("W2", "z"),
                       ("b2", "z"), ("h", "z"), ("y", "loss"), ("z", "loss")]
    # every forward edge into a node that needs a gradient has a dashed edge flowing back
    back = {(a, b) for a, b, _ in backward}
    assert back == {(b, a) for a, b in forward if a not in ("x", "y")}
    tags = equation_tags(s2)
    (signal,) = [attrs for a, b, attrs in backward if (a, b) == ("loss", "z")]
    assert f"δ</I><SUP>(2)</SUP> ({tags['delta_z']})" in signal
    (grad,) = [attrs for a, b, attrs in backward if (a, b) == ("z1", "W1")]
    assert f"∂ℓ/∂<I>W</I><SUP>(1)</SUP> ({tags['grad_W1']})" in grad


def test_node_labels_show_formula_shape_and_tag(s2):
    text = graph_dot(s2)
    assert ('"z1" [shape=ellipse' in text and
            "<I>z</I><SUP>(1)</SUP> = <I>W</I><SUP>(1)</SUP> <I>x</I> + <I>b</I><SUP>(1)</SUP>"
            in text)
    assert "128×784" in text and "label in 0..9" in text and "128 · (1)" in text
    assert "logsumexp(<I>z</I>) − <I>z</I><SUB><I>y</I></SUB>" in text


def test_graph_and_documents_are_deterministic_across_hash_seeds():
    """Same spec → byte-identical DOT, LaTeX and Markdown, whatever Python's hash seed."""
    code = ("import sys; from symbolic import derive, load_spec; from symbolic.graph import "
            "graph_dot; from symbolic.latex import latex_document, markdown_document\n"
            "for p in sys.argv[1:]:\n"
            "    d = derive(load_spec(p))\n"
            "    sys.stdout.write(graph_dot(d) + latex_document(d) + markdown_document(d))\n")
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code, *map(str, EXAMPLES)], env=env,
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1
    assert outs.pop().count("digraph") == len(EXAMPLES)


@needs_dot
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_renders(spec):
    svg = render_graph(derive(load_spec(spec)), "svg")
    assert svg.lstrip().startswith(b"<?xml") and b"</svg>" in svg


@needs_dot
@pytest.mark.parametrize("suffix,magic", [(".dot", b"digraph"), (".svg", b"<?xml"),
                                          (".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_write_graph_by_suffix(tmp_path, s2, suffix, magic):
    path = write_graph(s2, tmp_path / f"g{suffix}")
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [f"g{suffix}"]


def test_missing_dot_is_one_clear_error(tmp_path, monkeypatch, s2):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(GraphError, match="`dot` program is not on PATH") as err:
        write_graph(s2, tmp_path / "g.svg")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    write_graph(s2, tmp_path / "g.dot")          # DOT text needs no Graphviz
    assert (tmp_path / "g.dot").read_text().startswith('digraph "s2_mnist_mlp"')


def test_bad_paths(tmp_path, s2):
    with pytest.raises(GraphError, match="unknown graph format .gif"):
        write_graph(s2, tmp_path / "g.gif")
    with pytest.raises(GraphError, match="does not exist"):
        write_graph(s2, tmp_path / "missing" / "g.dot")
    assert list(tmp_path.iterdir()) == []
