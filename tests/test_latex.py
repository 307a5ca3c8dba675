"""The LaTeX derivation: the printer, the document's content, compiling it, writing files."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbolic import Reference, derive, load_spec, spec_from_dict
from symbolic.evaluate import evaluate
from symbolic.functions import MatProd, OneHot, Outer, Pick, Relu, Sigmoid, Softmax, SumAll
from symbolic.functions import Step as StepFn
from symbolic.functions import Transposed
from symbolic.latex import (
    DerivationLatexPrinter, DocumentError, backward_equations, batch_gradients, compile_pdf,
    derivation_markdown_math, equation_tags, expanded_applies,
    first_latex_error, forward_equations, latex_document, markdown_document, overfull_boxes,
    write_latex, write_markdown,
)
from symbolic.notation import Notation
from symbolic.verify import check_data, init_point
from strategies import ELEMENTWISE, vector_expr

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted([*(ROOT / "examples").glob("*.toml"), *(ROOT / "symgrad/specs").glob("*.toml")])
SCALAR_PARAM = ["curve_fit", "s1_linear_regression", "logistic_regression"]

needs_pdflatex = pytest.mark.skipif(shutil.which("pdflatex") is None,
                                    reason="pdflatex is not installed (CI installs TeX Live)")


def example(name: str):
    return derive(load_spec(ROOT / "examples" / f"{name}.toml"))


@pytest.fixture(scope="module")
def s2():
    return example("s2_mnist_mlp")


# ---------------------------------------------------------------------------- printer


def printer(d):
    return DerivationLatexPrinter(Notation(d))


def test_printer_writes_the_seed_notation(s2):
    p = printer(s2)
    sym = s2.symbol
    assert p.doprint(MatProd(sym("W1"), sym("x")) + sym("b1")) == r"W^{(1)} x + b^{(1)}"
    assert p.doprint(MatProd(Transposed(sym("W2")), sym("delta_z"))) == (
        r"(W^{(2)})^{\top} \delta^{(2)}")
    assert p.doprint(Outer(sym("delta_z1"), sym("x"))) == r"\delta^{(1)} x^{\top}"
    assert p.doprint(sym("delta_h") * StepFn(sym("z1"))) == (
        r"\frac{\partial \ell}{\partial h} \odot \mathbf{1}[z^{(1)} > 0]")
    assert p.doprint(Softmax(sym("z")) - OneHot(sym("y"), 10)) == (
        r"\operatorname{softmax}(z) - \mathbf{e}_{y}")
    assert p.doprint(Pick(sym("z"), sym("y"))) == "z_{y}"
    assert p.doprint(Relu(sym("z1"))) == r"\operatorname{relu}(z^{(1)})"
    assert p.doprint(SumAll(sym("z"))) == r"\mathbf{1}^{\top} z"


def test_scalar_times_vector_is_not_a_hadamard_product():
    d = example("logistic_regression")
    p = printer(d)
    assert p.doprint(d.symbol("delta_z") * d.symbol("x")) == r"\delta^{(1)} x"
    assert p.doprint(Sigmoid(d.symbol("z")) - d.symbol("y")) == r"\sigma(z) - y"


def test_printer_is_strict_about_unknown_operations(s2):
    class Mystery(sp.Function):
        nargs = 1

    with pytest.raises(TypeError, match="no rule for Mystery"):
        printer(s2).doprint(Mystery(s2.symbol("z")))


def test_user_functions_print_by_name():
    d = example("swish_mlp")
    (eq,) = [e for e in forward_equations(d) if e.step == "h"]
    assert eq.rhs == r"\operatorname{swish}(z^{(1)})"


# ---------------------------------------------------------------------------- tags


def test_tags_number_forward_then_backward_steps(s2):
    tags = equation_tags(s2)
    names = [s.name for s in [*s2.forward, *s2.backward]]
    assert [tags[n] for n in names] == list(range(1, len(names) + 1))
    eqs = forward_equations(s2) + [e for e in backward_equations(s2) if e.step]
    assert [(e.step, e.tag) for e in eqs] == [(n, tags[n]) for n in names]
    text = latex_document(s2)
    for k in range(1, len(names) + 1):
        assert text.count(rf"\tag{{{k}}}") == 1


# ---------------------------------------------------------------------------- content


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("name", ["s3_softmax_regression", "s5_tiny_mlp"])
def test_seed_systems_show_the_delta_recursion_and_simplifications(name):
    d = example(name)
    text = _normal(latex_document(d))
    # δ⁽ᴸ⁾ of the output and the weight/bias gradients in the seed's form
    last = max(s.layer for s in d.forward if s.layer)
    assert rf"\delta^{{({last})}} = \frac{{\partial \ell}}{{\partial" in text
    assert rf"\frac{{\partial \ell}}{{\partial W{'^{(%d)}' % last if last > 1 else ''}}} &= " \
           rf"\delta^{{({last})}}" in text
    assert r"\frac{\partial C}{\partial b" in text and r"\frac{1}{n} \sum_{i=1}^{n}" in text
    # the batch-mean matrix form the code uses
    assert rf"\frac{{1}}{{n}} (\Delta^{{({last})}})^{{\top}}" in text
    if name == "s5_tiny_mlp":
        # δ⁽¹⁾ = ((W⁽²⁾)ᵀ δ⁽²⁾) ⊙ f'(z⁽¹⁾), tagged steps and the combined recursion
        assert r"\frac{\partial \ell}{\partial h} &= (W^{(2)})^{\top} \delta^{(2)}" in text
        assert (r"\delta^{(1)} &= ((W^{(2)})^{\top} \delta^{(2)}) \odot \mathbf{1}[z^{(1)} > 0]"
                in text)
        assert r"\operatorname{relu}'(z) = \mathbf{1}[z > 0]" in text
        assert r"\frac{\partial \ell}{\partial W^{(1)}} &= \delta^{(1)} x^{\top}" in text
        assert r"\frac{\partial \ell}{\partial b^{(1)}} &= \delta^{(1)}" in text
    else:
        assert r"\delta^{(1)} = \frac{\partial \ell}{\partial z} &= " \
               r"\operatorname{softmax}(z) - y" in text
        assert r"\delta = \operatorname{softmax}(z) - y" in text      # the simplification line
        assert "softmax followed by cross-entropy" in text
        assert r"\operatorname{logsumexp}(z) = m + \log \sum_j e^{z_j - m}" in text


def test_document_sections_and_shapes(s2):
    text = latex_document(s2)
    for section in ("Model and loss", "Computation graph", "Forward pass", "Backward pass",
                    "Mean over the batch", "Simplifications", "Update rule"):
        assert section in text
    assert r"\mathbb{R}^{128 \times 784}" in text and r"\{0, \dots, 9\}" in text
    assert r"relu(W1 @ x + b1)" in text.replace(r"\allowbreak{}", "")   # the model as written
    assert r"\hat{m}_t &= \frac{m_t}{1 - \beta_1^{t}}" in text   # Adam
    assert r"\eta = 0.001" in text
    assert "Verification" not in text


@pytest.mark.parametrize("optimizer,marker", [
    ("gd", r"\theta_t &= \theta_{t-1} - \eta\, g_t"), ("sgd", "minibatches of 8"),
    ("momentum", r"v_t &= \mu\, v_{t-1} + g_t"), ("nesterov", r"g_t + \mu\, v_t"),
    ("rmsprop", r"s_t &= \rho\, s_{t-1}"), ("adam", r"\hat{v}_t"),
    ("adamw", r"w\, \theta_{t-1}"),
])
def test_update_rule_of_each_optimizer(optimizer, marker):
    spec = spec_from_dict({
        "name": "lin", "inputs": {"x": 3}, "targets": {"y": 1},
        "params": {"w": {"shape": [3]}, "b": {}}, "model": {"yhat": "w @ x + b"},
        "loss": {"expr": "mse(yhat, y)"},
        "train": {"optimizer": optimizer, "lr": 0.02, "batch_size": 8}})
    text = latex_document(derive(spec))
    assert marker in text
    assert r"\eta = 0.02" in text


def test_l2_penalty_appears_in_cost_and_gradients():
    d = derive(load_spec(ROOT / "examples" / "tanh_three_layer.toml"))
    text = latex_document(d)
    assert r"\frac{\lambda}{2} \left(\lVert W^{(1)} \rVert^{2}" in text
    assert r"+ \lambda W^{(1)}" in text


def test_verification_report_is_included():
    from symbolic.verify import verify_reference

    d = example("s1_linear_regression")
    report = verify_reference(d)
    text = latex_document(d, report=report)
    assert "Verification by finite differences" in text
    assert report.status in text
    md = markdown_document(d, report=report)
    assert "| $w$ | $3$ |" in md


def test_markdown_and_notebook_math(s2):
    md = markdown_document(s2)
    assert md.count("$$") % 2 == 0
    assert r"\tag{9}" in md and "## Backward pass" in md
    math = s2._repr_latex_()
    assert math == derivation_markdown_math(s2)
    assert math.startswith("$$") and math.endswith("$$")
    assert r"\delta^{(1)}" in math and r"\qquad (9)" in math


def test_matrix_models_have_no_expanded_section(s2):
    assert not expanded_applies(s2)
    assert "Expanded scalar gradients" not in latex_document(s2)


# ---------------------------------------------------------------------------- numbers


def _evaluate_document(d, X, Y, params):
    """Run the document's own equations: per-sample sources in order, then the batch forms."""
    forward = forward_equations(d)
    backward = [e for e in backward_equations(d)]
    rows: dict[str, list] = {}
    for x, y in zip(X, Y):
        env = {d.symbol(p): np.asarray(v, dtype=np.float64) for p, v in params.items()}
        env[d.symbol(d.spec.input_name)] = x if d.spec.input_shape else float(x)
        env[d.symbol(d.spec.target_name)] = int(y) if d.spec.classes else (
            np.asarray(y, dtype=np.float64) if d.spec.target_shape else float(y))
        for eq in [*forward, *backward]:
            value = evaluate(eq.source, env, {})
            if eq.step is None:           # the combined recursion: must equal its tagged step
                step = next(s for s in d.backward
                            if s.role == "delta" and notation_latex(d, s.name) == eq.lhs)
                np.testing.assert_allclose(value, env[d.symbol(step.name)], rtol=1e-12)
                continue
            shape = next(s.shape for s in [*d.forward, *d.backward] if s.name == eq.step)
            env[d.symbol(eq.step)] = np.broadcast_to(value, shape) if shape else value
        for name, value in d.values.items():
            if name in {str(s) for s in env}:
                rows.setdefault(name, []).append(np.asarray(env[value.symbol], dtype=np.float64))
    grads = {}
    n = len(X)
    for bg in batch_gradients(d):
        if bg.source is None:
            continue
        env = {d.symbol(p): np.asarray(v, dtype=np.float64) for p, v in params.items()}
        env[sp.Symbol("n", positive=True)] = float(n)
        env[sp.Symbol("ones_n")] = np.ones(n)
        env[sp.Symbol("lambda_l2")] = d.spec.l2
        for sym, name in bg.batch_symbols.items():
            env[sym] = np.array(rows[name])
        grads[bg.param] = evaluate(bg.source, env, {})
    return grads


def notation_latex(d, name):
    return Notation(d).latex(name)


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_printed_formulas_give_the_reference_numbers(spec):
    d = derive(load_spec(spec))
    X, Y = check_data(d, seed=3, n=5)
    rng = np.random.default_rng(1)
    params = {k: v + rng.normal(0, 0.1, np.shape(v)) for k, v in init_point(d, 1).items()}
    _, want = Reference(d).loss_and_grad(params, X, Y)
    got = _evaluate_document(d, X, Y, params)
    if len(d.spec.input_shape) or any(len(p.shape) > 1 for p in d.spec.params):
        assert set(got) >= {p.name for p in d.spec.params if len(p.shape) >= 1}
    for name, value in got.items():
        np.testing.assert_allclose(value, want[name], rtol=1e-10, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------------------- pdflatex


@needs_pdflatex
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_documents_compile_without_errors_or_overfull_boxes(spec, tmp_path):
    from symbolic.verify import verify_reference

    d = derive(load_spec(spec))
    report = verify_reference(d) if spec.stem in ("s1_linear_regression", "curve_fit") else None
    written = write_latex(d, tmp_path / f"{spec.stem}.tex", report=report)
    graph = [p for p in written if p.suffix == ".pdf"]
    extra = {p.name: p.read_bytes() for p in graph}
    pdf, log = compile_pdf((tmp_path / f"{spec.stem}.tex").read_text(), extra=extra)
    assert pdf.startswith(b"%PDF")
    assert overfull_boxes(log, tolerance_pt=0.5) == []
    assert "LaTeX Warning" not in log or "Label(s) may have changed" in log


@needs_pdflatex
def test_write_latex_pdf_writes_tex_graph_and_pdf(tmp_path, s2):
    paths = write_latex(s2, tmp_path / "s2.tex", pdf=True)
    names = sorted(p.name for p in paths)
    expected = ["s2-graph.pdf", "s2.pdf", "s2.tex"] if shutil.which("dot") else ["s2.pdf", "s2.tex"]
    assert names == expected
    assert (tmp_path / "s2.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(os.listdir(tmp_path)) == expected       # no temporary files left


def test_first_latex_error_is_one_line():
    log = "junk\n! Undefined control sequence.\nl.42 \\foo\n more\n"
    assert first_latex_error(log) == "Undefined control sequence. (l.42)"


# ---------------------------------------------------------------------------- bad input


def test_missing_pdflatex_with_pdf_is_one_clear_error(tmp_path, monkeypatch, s2):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DocumentError, match="pdflatex not found on PATH") as err:
        write_latex(s2, out / "s2.tex", pdf=True)
    assert "\n" not in str(err.value)
    assert list(out.iterdir()) == []


def test_without_dot_the_graph_is_a_table(tmp_path, monkeypatch, s2):
    monkeypatch.setenv("PATH", str(tmp_path))
    paths = write_latex(s2, tmp_path / "s2.tex")
    assert [p.name for p in paths] == ["s2.tex"]
    text = (tmp_path / "s2.tex").read_text()
    assert "computed from" in text and r"\fitgraphic{s2-graph" not in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_unwritable_directory_is_one_clear_error(tmp_path, s2):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(DocumentError, match="not writable"):
            write_latex(s2, locked / "s2.tex")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(stat.S_IRWXU)


def test_refused_temporary_file_is_one_clear_error(tmp_path, monkeypatch, s2):
    """What an unwritable directory does even for root (who passes the permission check)."""
    import symbolic.latex as latex

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(latex.tempfile, "mkstemp", refuse)
    with pytest.raises(DocumentError, match=r"cannot write .*s2\.tex: Permission denied"):
        write_latex(s2, tmp_path / "s2.tex", graph=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_and_wrong_suffix(tmp_path, s2):
    with pytest.raises(DocumentError, match="does not exist"):
        write_latex(s2, tmp_path / "nope" / "s2.tex")
    with pytest.raises(DocumentError, match=r"\.tex file name"):
        write_latex(s2, tmp_path / "s2.txt")
    with pytest.raises(DocumentError, match="is a directory"):
        write_markdown(s2, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, s2):
    import symbolic.latex as latex

    (tmp_path / "s2.tex").write_text("old")
    real = os.replace

    def broken(src, dst):
        if str(dst).endswith("s2.tex"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(latex.os, "replace", broken)
    with pytest.raises(DocumentError, match="No space left on device"):
        write_latex(s2, tmp_path / "s2.tex", graph=False)
    assert (tmp_path / "s2.tex").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["s2.tex"]


def test_markdown_file(tmp_path, s2):
    paths = write_markdown(s2, tmp_path / "s2.md", graph=False)
    assert paths == [tmp_path / "s2.md"]
    assert (tmp_path / "s2.md").read_text().startswith("# Gradients of `s2_mnist_mlp`")


@needs_pdflatex
@pytest.mark.parametrize("name", ["s2_mnist_mlp", "s1_linear_regression", "tanh_three_layer"])
def test_markdown_and_notebook_math_compile(name):
    """The $$ blocks of the Markdown and of _repr_latex_ are valid amsmath (MathJax's dialect)."""
    from symbolic.verify import verify_reference

    d = example(name)
    blocks = re.findall(r"\$\$(.*?)\$\$", markdown_document(d, report=verify_reference(d)), re.S)
    blocks += re.findall(r"\$\$(.*?)\$\$", d._repr_latex_(), re.S)
    body = "\n".join(rf"\[ {b.strip()} \]" for b in blocks)
    tex = ("\\documentclass{article}\\usepackage{amsmath,amssymb}\\begin{document}\n"
           f"{body}\n\\end{{document}}\n")
    pdf, _ = compile_pdf(tex)
    assert pdf.startswith(b"%PDF")


# ---------------------------------------------------------------------------- any model

LOSSES = ["mse({e}, y)", "huber({e}, y, 0.5)", "bce_with_logits({e}, y)", "mae({e}, y)",
          "logsumexp({e}) - dot(y, {e})", "sum(square({e} - y)) + mean({e})", "dot(v, {e}) * s",
          "binary_cross_entropy(sigmoid({e}), y)"]
FUNCTIONS = (*ELEMENTWISE, "exp")


def random_derivation(expr: str, loss: str, m: int, d: int, second: bool):
    import warnings

    spec = spec_from_dict({
        "name": "random", "inputs": {"x": {"shape": [d]}}, "targets": {"y": {"shape": [m]}},
        "params": {"W": {"shape": [m, d]}, "V": {"shape": [m, m]}, "b": {"shape": [m]},
                   "v": {"shape": [m]}, "s": {"init": 0.7}},
        "functions": {"swish": "z * sigmoid(z)"},
        "model": {"h": expr, "out": "tanh(V @ h + b)" if second else "h"},
        "loss": {"expr": loss.format(e="out")}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return derive(spec)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=vector_expr(3, FUNCTIONS), loss=st.sampled_from(LOSSES), m=st.integers(1, 4),
       d=st.integers(1, 4), second=st.booleans())
def test_any_model_prints_and_evaluates_like_the_reference(expr, loss, m, d, second):
    """Every operation the parser can produce has a LaTeX rule, and the printed sources (steps,
    recursion, batch forms) give the reference gradients."""
    deriv = random_derivation(expr, loss, m, d, second)
    text = latex_document(deriv)
    assert text.count(r"\tag{") == len(deriv.forward) + len(deriv.backward)
    markdown_document(deriv)
    X, Y = check_data(deriv, seed=0, n=3)
    params = init_point(deriv, 0)
    params = {k: v + np.random.default_rng(2).normal(0, 0.3, np.shape(v))
              for k, v in params.items()}
    try:
        _, want = Reference(deriv).loss_and_grad(params, X, Y)
    except ArithmeticError:
        return
    for name, value in _evaluate_document(deriv, X, Y, params).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-9, atol=1e-12, err_msg=name)


@needs_pdflatex
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=vector_expr(3, FUNCTIONS), loss=st.sampled_from(LOSSES), second=st.booleans())
def test_long_formulas_never_overflow_the_page(expr, loss, second):
    pdf, log = compile_pdf(latex_document(random_derivation(expr, loss, 3, 2, second)))
    assert overfull_boxes(log, tolerance_pt=0.5) == []
