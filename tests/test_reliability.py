"""RELIABILITY_CASES.md: the cases (or the parts of cases) that no other test file covers.

Every case A1–F40 carries ``@pytest.mark.reliability("<id>")`` on each test that checks it, here
or in the other test files; ``test_reliability_index.py`` proves that all 40 are marked. Sections
follow the letters A–F. Compiled code is shared: the committed generated modules come from the
session fixtures (conftest.py), and the few specs compiled here are module-scoped fixtures.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import codegen
from codegen.pipeline import content_hash, render_module
from symbolic import Reference, SpecError, derive, load_spec, spec_from_toml
from symbolic.check import INCONCLUSIVE, OK, TOO_SMALL, WRONG, check_gradients, random_point
from symbolic.names import name_problem
from symbolic.verify import fan_in, verify

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"
EXAMPLES = ROOT / "examples"
BAD = ROOT / "tests" / "data" / "specs"
EXAMPLE_NAMES = [p.stem for p in sorted(EXAMPLES.glob("*.toml"))] + ["digits_mlp"]
SEED_SYSTEMS = ["s1_linear_regression", "s2_mnist_mlp", "s3_softmax_regression", "s4_mlp_sgd",
                "s5_tiny_mlp"]

reliability = pytest.mark.reliability


def symgrad_cli(*args, cwd: Path, env: dict | None = None, timeout: int = 300):
    exe = shutil.which("symgrad")
    command = [exe] if exe else [sys.executable, "-m", "symgrad.cli"]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A non-zero exit, exactly one stderr line (`symgrad: error: ...`), no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("symgrad: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


SMALL_SPEC = """
name = "{name}"
[inputs]
{x} = 3
[targets]
{y} = 1
[params]
{W} = {{ shape = [4, 3] }}
{b} = {{ shape = [4] }}
{v} = {{ shape = [4] }}
[model]
{h} = "tanh({W} @ {x} + {b})"
{yhat} = "{v} @ {h}"
[loss]
expr = "mse({yhat}, {y})"
"""


# ============================================================== A. specs and formula parsing


# The command line: each hostile or malformed spec is one line on stderr, a non-zero exit, the
# output folder never created, and the formula never run (A1 names the sentinel file).
CLI_BAD_SPECS = [
    pytest.param("import", ["function `__import__` is not allowed", "allowed functions: abs",
                            "bad_import.toml"], marks=reliability("A1"), id="import"),
    pytest.param("duplicate_key", [":24:", "Cannot overwrite a value"], marks=reliability("A10"),
                 id="duplicate_key"),
    pytest.param("lr_string", [":23:", "train.lr", "'0.1'"], marks=reliability("A10"),
                 id="lr_string"),
    pytest.param("batch_negative", [":24:", "train.batch_size", "-5"], marks=reliability("A10"),
                 id="batch_negative"),
    pytest.param("unknown_key", [":24:", "unknown key `learning_rate`"],
                 marks=reliability("A10"), id="unknown_key"),
    pytest.param("lr_nan", ["train.lr", "finite"], marks=reliability("A11"), id="lr_nan"),
    pytest.param("inf_constant", ["loss.expr", "`1e400` is not finite"],
                 marks=reliability("A11"), id="inf_constant"),
]


@pytest.mark.parametrize("defect, needles", CLI_BAD_SPECS)
def test_bad_spec_through_the_cli_is_one_line_and_writes_nothing(defect, needles, tmp_path):
    spec = tmp_path / f"bad_{defect}.toml"
    shutil.copy(BAD / spec.name, spec)
    result = symgrad_cli("generate", spec, "-o", tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert result.returncode == 2
    assert files_under(tmp_path) == [spec.name]  # no output folder, no PWNED, nothing else


@reliability("A6")
def test_names_equal_after_nfkc_are_rejected():
    base = SMALL_SPEC.format(name="m", x="x", y="y", W="W1", b="b", v="v", h="h", yhat="yhat")
    twin = base.replace('b = { shape = [4] }', 'b = { shape = [4] }\n"\uff371" = { shape = [4] }')
    with pytest.raises(SpecError, match=r"U\+FF37.*looks like 'W1'"):
        spec_from_toml(twin)
    cyrillic = base.replace('"tanh(W1 @ x + b)"', '"tanh(W1 @ x + \u0430)"')
    with pytest.raises(SpecError, match=r"U\+0430"):
        derive(spec_from_toml(cyrillic))


def _free_globals(function: ast.FunctionDef) -> set[str]:
    """Names a function reads that it neither binds nor receives (module globals, builtins)."""
    bound = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    bound |= {n.id for n in ast.walk(function) if isinstance(n, ast.Name)
              and isinstance(n.ctx, ast.Store)}
    bound |= {f.name for f in ast.walk(function) if isinstance(f, ast.FunctionDef)}
    return {n.id for n in ast.walk(function) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)} - bound


@reliability("A7")
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_no_spec_name_can_shadow_what_the_generated_code_uses(name):
    """Spec names become locals of the compiled functions (and Params fields): every global those
    functions read (helpers, numpy, builtins) and every import is a name no spec may use."""
    tree = ast.parse((GENERATED / f"{name}.py").read_text())
    spec_names = set(derive(load_spec(EXAMPLES / f"{name}.toml" if name != "digits_mlp"
                                      else ROOT / "symgrad/specs/digits_mlp.toml")).values)
    shadowable: set[str] = set()
    with_spec_names = []
    for node in tree.body:
        compiled = isinstance(node, ast.FunctionDef) and any(
            "njit" in ast.unparse(decorator) for decorator in node.decorator_list)
        if compiled:
            bound = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
            bound |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                      and isinstance(n.ctx, ast.Store)}
            if bound & spec_names:  # spec names are this function's locals
                with_spec_names.append(node.name)
                shadowable |= _free_globals(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            shadowable |= {(a.asname or a.name).split(".")[0] for a in node.names}
    assert {"_forward", "_loss", "_step"} <= set(with_spec_names)
    assert {"np", "range"} <= shadowable
    usable = sorted(n for n in shadowable - spec_names if name_problem(n) is None)
    assert usable == [], f"names a spec could use but the generated code needs: {usable}"


@pytest.fixture(scope="module")
def template_named_module(tmp_path_factory):
    """A spec whose names are the generated code's own locals and constants (allowed, since they
    live in other scopes), generated and imported."""
    spec = spec_from_toml(SMALL_SPEC.format(name="rel_template_names", x="i", y="j", W="T",
                                            b="TASK", v="L2", h="out", yhat="CLASSES"))
    d = derive(spec)
    path = codegen.generate(d, tmp_path_factory.mktemp("template_names"), verify=False)
    module = codegen.load_module(path)
    report = codegen.verify_module(module, d)
    assert report.ok, report.table()
    return d, module


@reliability("A7")
def test_template_local_names_still_import_and_run(template_named_module):
    d, module = template_named_module
    assert module.PARAM_NAMES == ("T", "TASK", "L2") and module.TASK == "regression"
    assert module.CLASSES is None and module.L2 == 0.0
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=6)
    point = random_point({p.name: p.shape for p in d.spec.params}, seed=1, fan_in=fan_in(d))
    value, grads = module.loss_and_grad(point, X, Y)
    ref_value, ref_grads = Reference(d).loss_and_grad(point, X, Y)
    assert value == pytest.approx(ref_value, rel=1e-12)
    for key, expected in ref_grads.items():
        np.testing.assert_allclose(getattr(grads, key), expected, rtol=1e-10, atol=1e-14)


@reliability("A7")
@pytest.mark.parametrize("model_name", ["json", "collections", "numpy", "sympy", "random"])
def test_model_names_that_would_shadow_a_module_are_refused(model_name, tmp_path):
    spec = spec_from_toml(SMALL_SPEC.format(name=model_name, x="x", y="y", W="W", b="b", v="v",
                                            h="h", yhat="yhat")) \
        if model_name not in ("collections", "numpy") else None
    if spec is None:  # names the generated code imports are refused by the spec itself
        with pytest.raises(SpecError, match="used by the generated code"):
            spec_from_toml(SMALL_SPEC.format(name=model_name, x="x", y="y", W="W", b="b",
                                              v="v", h="h", yhat="yhat"))
        return
    with pytest.raises(codegen.CodegenError, match=f"'{model_name}' is the name of a"):
        codegen.generate(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []
    # a file of that name is never imported under it either
    (tmp_path / f"{model_name}.py").write_text("x = 1\n")
    before = sys.modules.get(model_name)
    with pytest.raises(codegen.CodegenError, match="would shadow it"):
        codegen.load_module(tmp_path / f"{model_name}.py")
    assert sys.modules.get(model_name) is before


HOSTILE_FOLDERS = ["evil\nimport os; os.system('touch PWNED')\n#", "cr\rimport os\r#",
                   "ls\u2028x", "bidi\u202egnp", "ünï"]


@reliability("A8")
@pytest.mark.parametrize("folder", HOSTILE_FOLDERS, ids=["newline", "cr", "u2028", "bidi",
                                                         "non_ascii"])
def test_a_hostile_spec_path_cannot_reach_the_generated_source(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = EXAMPLES / "s1_linear_regression.toml"
    (tmp_path / folder).mkdir()
    hostile = Path(folder) / "s1.toml"
    shutil.copy(plain, hostile)
    text = render_module(hostile)
    reference = render_module(plain)
    assert ast.dump(ast.parse(text)) == ast.dump(ast.parse(reference))  # only template code
    header = text.splitlines()[:4]
    assert all(line.startswith("# ") for line in header[:3]) and header[3].startswith('"""')
    assert all(line.isascii() and line.isprintable() for line in header[:3])
    assert not (tmp_path / "PWNED").exists()


@reliability("A8")
@pytest.mark.parametrize("char", ["\n", "\r", "\u2028", "\u202e"])
def test_control_characters_in_any_spec_string_are_rejected(char):
    base = SMALL_SPEC.format(name="m", x="x", y="y", W="W", b="b", v="v", h="h", yhat="yhat")
    escaped = char.encode("unicode_escape").decode()
    where = {
        "functions": base.replace("[model]", f'[functions]\nact = "tanh(z){escaped}"\n[model]'),
        "model": base.replace('"v @ h"', f'"v @ h{escaped}"'),
        "name": base.replace('name = "m"', f'name = "m{escaped}"'),
        "optimizer": base + f'[train]\noptimizer = "gd{escaped}"\n',
    }
    for field, text in where.items():
        with pytest.raises(SpecError) as info:
            derive(spec_from_toml(text))
        assert "\n" not in str(info.value), field


@reliability("A11")
@pytest.mark.parametrize("change", [
    ('"v @ h"', '"v @ h * inf"', "unknown name `inf`"),
    ('"v @ h"', '"v @ h * 1e400"', "not finite"),
    ('"v @ h"', '"v @ h * nan"', "unknown name `nan`"),
    ("[loss]", "[train]\nlr = inf\n[loss]", "finite"),
    ("[loss]", "[train]\nlr = nan\n[loss]", "finite"),
    ("[loss]", "[train]\nlr = 1e400\n[loss]", "finite"),
])
def test_non_finite_numbers_are_rejected(change):
    old, new, message = change
    base = SMALL_SPEC.format(name="m", x="x", y="y", W="W", b="b", v="v", h="h", yhat="yhat")
    text = base.replace(old, new, 1)
    assert text != base
    with pytest.raises(SpecError, match=message):
        derive(spec_from_toml(text))


# ======================================================================== B. code generation


@reliability("B14")
def test_a_changed_module_of_the_same_size_is_never_served_from_a_stale_numba_cache(tmp_path):
    """Regenerate with a change that keeps the file size; a fresh process that shares the Numba
    cache with the one that compiled the old version computes the new numbers."""
    text = (EXAMPLES / "s1_linear_regression.toml").read_text().replace(
        'name = "s1_linear_regression"', 'name = "rel_stale"')
    spec = tmp_path / "rel_stale.toml"
    out = tmp_path / "gen"
    script = textwrap.dedent("""
        import sys, numpy as np, codegen
        module = codegen.load_module(sys.argv[1])
        params = {"w": np.array([0.5, -1.0, 2.0]), "b": np.array(0.25)}
        X = np.arange(12.0).reshape(4, 3) / 10
        print(repr(module.loss_and_grad(params, X, np.ones(4))[0]))
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    losses, sizes = [], []
    for factor in ("3", "4"):  # the derivative's constants 6 and 8: same length
        spec.write_text(text.replace("square(yhat - y) / 2", f"square(yhat - y) * {factor}"))
        path = codegen.generate(spec, out, verify=False)
        sizes.append(path.stat().st_size)
        run = subprocess.run([sys.executable, "-c", script, str(path)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        losses.append(float(run.stdout))
    assert sizes[0] == sizes[1]
    assert any((tmp_path / "numba").rglob("*.nbi"))  # the cache was shared
    assert losses[1] == pytest.approx(losses[0] * 4 / 3, rel=1e-12)


# =================================================================== C. gradient verification


@reliability("C15")
@pytest.mark.parametrize("name", SEED_SYSTEMS)
def test_seed_systems_pass_on_the_generated_module_with_margin(name, derivation, generated_module):
    d, module = derivation(name), generated_module(name)
    report = codegen.verify_module(module, d, seed=0)  # float64, the file imported from disk
    assert report.ok, report.table()
    assert report.points == 3 and report.margin <= 0.1
    assert [row.name for row in report.rows] == [p.name for p in d.spec.params]
    table = report.table()
    for row in report.rows:
        assert row.checked > 0 and row.status == OK
        assert math.isfinite(row.max_abs_err) and math.isfinite(row.max_rel_err)
        assert row.name in table
    assert "max abs err" in table and "max rel err" in table
    data = report.to_dict()
    assert {"max_abs_err", "max_rel_err", "margin"} <= set(data["rows"][0])


def _mutated(module, change):
    def loss_and_grad(params, X, Y):
        value, grads = module.loss_and_grad(params, X, Y)
        grads = {k: np.asarray(v, dtype=np.float64) for k, v in grads._asdict().items()}
        return value, change(grads)
    return loss_and_grad


def _assert_named(report, name):
    assert report.status == WRONG and not report.ok
    row = report.row(name)
    assert row.status == WRONG and row.worst is not None and row.worst.target == name
    line = next(f for f in report.failures() if f.startswith(f"{name}:"))
    assert row.worst.label in line  # the index
    assert f"analytic {row.worst.analytic:.12g}" in line
    assert f"numeric {row.worst.numeric:.12g}" in line


MUTATIONS = {
    "scaled": ("s5_tiny_mlp", "W1", lambda g: {**g, "W1": g["W1"] * (1 + 1e-4)}),
    "transposed": ("tanh_three_layer", "W2", lambda g: {**g, "W2": g["W2"].T.copy()}),
    "flipped_sign": ("s5_tiny_mlp", "b2", lambda g: {**g, "b2": -g["b2"]}),
    "missing_1_over_n": ("s1_linear_regression", "w", lambda g: {**g, "w": g["w"] * 4}),
}


@reliability("C16")
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutated_generated_gradients_fail_and_are_named(mutation, derivation, generated_module):
    name, tensor, change = MUTATIONS[mutation]
    d, module = derivation(name), generated_module(name)

    def loss(params, X, Y):
        return module.loss({k: np.asarray(v, np.float64) for k, v in params.items()}, X, Y)

    report = verify(d, loss, _mutated(module, change), seed=0)
    _assert_named(report, tensor)


@reliability("C16")
def test_dropped_bias_term_in_the_generated_source_fails(derivation):
    d = derivation("s5_tiny_mlp")
    good = render_module(d)
    head, tail = good.split("def _step(", 1)
    assert tail.count("yhat = _acc + b2[0]\n") == 1  # yhat (one entry) is a local
    bad = head + "def _step(" + tail.replace("yhat = _acc + b2[0]\n", "yhat = _acc\n")
    report = codegen.check_text(bad, d)
    assert report.status == WRONG
    assert report.row("b2").status == WRONG
    assert any(f.startswith("b2:") and "analytic" in f and "numeric" in f
               for f in report.failures())


@pytest.fixture(scope="module")
def zero_row_batch():
    rng = np.random.default_rng(11)
    X, Y = rng.normal(size=(4, 10)), rng.normal(size=4)
    X[2] = 0.0  # an all-zero input row: z1 = b1 for that sample
    return X, Y


@reliability("C17")
def test_relu_kink_from_a_zero_row_is_skipped_and_reported_on_the_generated_module(
        derivation, generated_module, zero_row_batch):
    d, module = derivation("s5_tiny_mlp"), generated_module("s5_tiny_mlp")
    X, Y = zero_row_batch
    ref = Reference(d)
    shapes = {p.name: p.shape for p in d.spec.params}
    points = [{**random_point(shapes, seed=s, fan_in=fan_in(d)), "b1": np.zeros(5)}
              for s in (1, 2, 3)]  # zero bias: z1 = 0 exactly for row 2, at every point
    loss = lambda p: module.loss(p, X, Y)  # noqa: E731
    loss_and_grad = lambda p: (lambda v, g: (v, g._asdict()))(*module.loss_and_grad(p, X, Y))  # noqa: E731,E501
    report = check_gradients(loss, loss_and_grad, points,
                             kink_masks=lambda p: ref.kink_masks(p, X, Y), seed=0)
    assert report.status != WRONG, report.table()
    assert report.row("b1").skipped_kinks > 0 and report.row("b1").status != WRONG
    assert all(report.row(n).status == OK for n in ("W1", "W2", "b2"))
    assert any("crossed a kink" in note for note in report.notes)
    assert "kinks" in report.table()
    blind = check_gradients(loss, loss_and_grad, points, seed=0)  # the kink is real
    assert blind.row("b1").status == WRONG

    # the whole protocol, with that batch as its data: kinks avoided or skipped, never "wrong"
    full = codegen.verify_module(module, d, seed=0, data=(X, Y))
    assert full.status != WRONG and full.ok, full.table()
    assert any("kinks (relu)" in note for note in full.notes)


BIAS_FREE_RELU = """
name = "rel_bias_free_relu"
[inputs]
x = 4
[targets]
y = 1
[params]
W1 = { shape = [3, 4], init = "he" }
W2 = { shape = [1, 3] }
b2 = { shape = [1] }
[model]
h = "relu(W1 @ x)"
yhat = "W2 @ h + b2"
[loss]
expr = "mse(yhat, y)"
"""


@reliability("C17")
def test_zero_row_with_zero_bias_through_verify_is_detected_and_not_wrong(tmp_path):
    """No bias on the ReLU layer: the zero row gives z = 0 exactly at every point, so no point
    can avoid the kink; verify reports that and still never calls the gradient wrong."""
    d = derive(spec_from_toml(BIAS_FREE_RELU))
    module = codegen.load_module(codegen.generate(d, tmp_path, verify=False))
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(4, 4)), rng.normal(size=4)
    X[1] = 0.0
    report = codegen.verify_module(module, d, seed=0, data=(X, Y))
    assert report.status != WRONG, report.table()
    assert report.status in (OK, INCONCLUSIVE)
    assert any("could not draw a point away from every kink" in n for n in report.notes)
    assert any("kinks (relu)" in n for n in report.notes)


@reliability("C18")
def test_kink_conventions_hold_in_generated_code_and_heaviside_never_reaches_it(
        derivation, generated_module, zero_row_batch):
    for name in EXAMPLE_NAMES:
        text = (GENERATED / f"{name}.py").read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "heaviside" not in code.lower() and "np.select" not in code
    d, module = derivation("s5_tiny_mlp"), generated_module("s5_tiny_mlp")
    X, Y = zero_row_batch
    shapes = {p.name: p.shape for p in d.spec.params}
    point = {**random_point(shapes, seed=4, fan_in=fan_in(d)), "b1": np.zeros(5)}
    _, grads = module.loss_and_grad(point, X[2:3], Y[2:3])  # only the kinked sample: z1 = 0
    np.testing.assert_array_equal(grads.b1, np.zeros(5))  # relu'(0) = 0, not 1/2
    np.testing.assert_array_equal(grads.W1, np.zeros((5, 10)))
    # abs'(0) = 0 and leaky_relu'(0) = alpha, in the reference evaluator the codegen matches
    for formula, slope in (("abs(w * x)", 0.0), ("leaky_relu(w * x, 0.2)", 0.2),
                           ("relu(w * x)", 0.0)):
        spec = spec_from_toml(textwrap.dedent(f"""
            name = "kink"
            [inputs]
            x = 1
            [targets]
            y = 1
            [params]
            w = {{}}
            [model]
            yhat = "{formula}"
            [loss]
            expr = "yhat - y"
        """))
        _, g = Reference(derive(spec)).loss_and_grad({"w": np.array(0.0)}, np.array([1.0]),
                                                     np.array([0.0]))
        assert float(g["w"]) == slope, formula


@reliability("C19")
@pytest.mark.parametrize("name", ["curve_fit", "swish_mlp"])
def test_smooth_custom_formulas_agree_with_a_pytorch_oracle(name, derivation, generated_module):
    torch = pytest.importorskip("torch")
    d, module = derivation(name), generated_module(name)
    report = codegen.verify_module(module, d, seed=0)
    assert report.ok, report.table()  # FD check of the generated module
    rng = np.random.default_rng(5)
    X = rng.normal(size=(16, *module.INPUT_SHAPE))
    X2 = X.reshape(16, -1)
    for seed in (1, 2):
        point = random_point({p.name: p.shape for p in d.spec.params}, seed=seed,
                             fan_in=fan_in(d))
        t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
             for k, v in point.items()}
        if name == "curve_fit":
            Y = rng.normal(size=16)
            tt = torch.tensor(X2[:, 0], dtype=torch.float64)
            yhat = t["a"] * torch.exp(-t["k"] * tt) + t["c"]
            oracle = torch.mean((yhat - torch.tensor(Y)) ** 2)
        else:
            Y = np.arange(16) % 10
            x = torch.tensor(X2, dtype=torch.float64)
            z1 = x @ t["W1"].T + t["b1"]
            h = z1 * torch.sigmoid(z1)
            z = h @ t["W2"].T + t["b2"]
            oracle = torch.nn.functional.cross_entropy(z, torch.tensor(Y), reduction="mean")
        oracle.backward()
        value, grads = module.loss_and_grad(point, X, Y)
        assert value == pytest.approx(oracle.item(), rel=1e-10)
        for key in point:
            expected = t[key].grad.numpy()
            got = getattr(grads, key)
            scale = np.max(np.abs(expected))
            assert np.max(np.abs(got - expected)) <= 1e-10 * scale, key


@reliability("C21")
def test_a_loss_scaled_by_1e_minus_12_is_never_called_wrong(derivation, generated_module):
    d, module = derivation("s1_linear_regression"), generated_module("s1_linear_regression")

    def loss(params, X, Y):
        return module.loss(params, X, Y) * 1e-12

    def loss_and_grad(params, X, Y):
        value, grads = module.loss_and_grad(params, X, Y)
        return value * 1e-12, {k: v * 1e-12 for k, v in grads._asdict().items()}

    report = verify(d, loss, loss_and_grad, seed=0)
    assert report.status in (OK, TOO_SMALL), report.table()
    assert all(row.status in (OK, TOO_SMALL) for row in report.rows)


# ============================================================================== D. numerics


LOGIT_SPECS = {
    "softmax": """
        name = "rel_softmax_logits"
        [inputs]
        x = 3
        [targets]
        y = { classes = 3 }
        [params]
        b = { shape = [3] }
        [model]
        z = "x + b"
        [loss]
        expr = "softmax_cross_entropy(z, y)"
    """,
    "bce": """
        name = "rel_bce_logits"
        [inputs]
        x = 3
        [targets]
        y = 3
        [params]
        b = { shape = [3] }
        [model]
        z = "x + b"
        [loss]
        expr = "bce_with_logits(z, y)"
    """,
}


@pytest.fixture(scope="module")
def logit_modules(tmp_path_factory):
    """The two logit specs, generated (unverified: these tests are the check) and imported."""
    out = tmp_path_factory.mktemp("logits")
    return {key: codegen.load_module(codegen.generate(spec_from_toml(textwrap.dedent(text)),
                                                      out, verify=False))
            for key, text in LOGIT_SPECS.items()}


DTYPES = [pytest.param(np.float64, 1e-12, id="float64"), pytest.param(np.float32, 1e-6,
                                                                         id="float32")]


@reliability("D22")
@pytest.mark.parametrize("dtype, rel", DTYPES)
def test_softmax_cross_entropy_of_huge_logits_in_the_generated_module(dtype, rel,
                                                                      logit_modules):
    module = logit_modules["softmax"]
    params = {"b": np.zeros(3, dtype)}
    X = np.tile(np.array([1000.0, 0.0, -1000.0], dtype), (3, 1))
    for label, expected in ((0, 0.0), (1, 1000.0), (2, 2000.0)):
        Y = np.array([label])
        value, grads = module.loss_and_grad(params, X[:1], Y)
        assert grads.b.dtype == dtype and np.all(np.isfinite(grads.b)) and math.isfinite(value)
        assert value == pytest.approx(expected, rel=rel, abs=rel)
        assert module.loss(params, X[:1], Y) == pytest.approx(expected, rel=rel, abs=rel)
        np.testing.assert_allclose(grads.b, np.array([1.0, 0.0, 0.0]) - np.eye(3)[label],
                                   atol=rel)
    value, grads = module.loss_and_grad(params, X, np.array([0, 1, 2]))  # the batch mean
    assert value == pytest.approx(1000.0, rel=rel)


@reliability("D23")
@pytest.mark.parametrize("dtype, rel", DTYPES)
def test_bce_with_logits_in_the_generated_module(dtype, rel, logit_modules):
    module = logit_modules["bce"]
    params = {"b": np.zeros(3, dtype)}
    X = np.array([[100.0, -100.0, 100.0], [100.0, 100.0, -100.0]], dtype)
    Y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    value, grads = module.loss_and_grad(params, X, Y)
    assert value == pytest.approx(100 / 3, rel=rel)  # Keras' 33.333...
    sigmoid = 1 / (1 + np.exp(-X.astype(np.float64)))
    np.testing.assert_allclose(grads.b, np.mean((sigmoid - Y) / 3, axis=0), atol=rel)
    X40 = np.full((1, 3), 40.0, dtype)  # z = 40, y = 0 -> loss 40, not inf
    value, grads = module.loss_and_grad(params, X40, np.zeros((1, 3)))
    assert math.isfinite(value) and value == pytest.approx(40.0, rel=rel)
    np.testing.assert_allclose(grads.b, np.full(3, 1 / (1 + math.exp(-40.0)) / 3), rtol=rel)
    assert grads.b.dtype == dtype


@reliability("D24")
@pytest.mark.parametrize("dtype, rel", DTYPES)
def test_equal_logits_of_zero_initialised_s3_give_log_c(dtype, rel, generated_module):
    module = generated_module("s3_softmax_regression")
    params = module.init_params(0, dtype)
    assert all(not np.any(p) for p in params)  # S3 starts at zero
    X = np.random.default_rng(0).random((20, 784)).astype(dtype)
    Y = np.eye(10)[np.arange(20) % 7]  # S3's targets are one-hot rows
    value, grads = module.loss_and_grad(params, X, Y)
    assert value == pytest.approx(math.log(10), rel=rel)  # 2.302585...
    assert value == pytest.approx(2.302585092994046, rel=rel)
    expected_b = np.mean(np.full((20, 10), 0.1) - Y, axis=0)  # 1/C - y
    np.testing.assert_allclose(grads.b, expected_b, atol=rel)
    assert grads.b.dtype == dtype


# ====================================================================== F. files, caches


F37_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import numpy as np
    import codegen
    warnings.simplefilter("always")
    module = codegen.load_module(sys.argv[1])
    X = np.arange(12.0).reshape(4, 3) / 10
    value, grads = module.loss_and_grad(module.init_params(3), X, np.ones(4))
    print(repr(value))
""")


@reliability("F37")
@pytest.mark.parametrize("where", ["numba_cache_dir", "pycache"])
def test_a_truncated_numba_cache_is_cleared_and_recompiled(where, tmp_path):
    folder = tmp_path / "mod"
    folder.mkdir()
    module_path = folder / "rel_cache_s1.py"
    text = (GENERATED / "s1_linear_regression.py").read_text()
    module_path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    if where == "numba_cache_dir":
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
        cache_root = tmp_path / "numba"
    else:
        cache_root = folder / "__pycache__"

    def run():
        return subprocess.run([sys.executable, "-c", F37_SCRIPT, str(module_path)], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    indexes = sorted(cache_root.rglob("*.nbi"))
    assert len(indexes) >= 2 and any(cache_root.rglob("*.nbc"))
    # a truncated index for one function, truncated data files for every other one
    for k, index in enumerate(indexes):
        targets = [index] if k == 0 else sorted(index.parent.glob(index.name[:-4] + ".*.nbc"))
        for path in targets:
            data = path.read_bytes()
            path.write_bytes(data[:len(data) // 2])
    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    warned = [line for line in again.stderr.splitlines() if "CacheWarning" in line]
    assert len(warned) == len(indexes), again.stderr  # one message per function, then fixed
    assert all("cleared it" in line for line in warned)
    assert float(again.stdout) == float(first.stdout)
    clean = run()  # the cache was rewritten: silent again
    assert clean.returncode == 0 and "CacheWarning" not in clean.stderr, clean.stderr
    assert float(clean.stdout) == float(first.stdout)


@reliability("F37")
def test_cache_recovery_in_process(tmp_path, generated_module):
    """recover_numba_cache is what load_module runs: an intact cache clears nothing."""
    module = generated_module("s1_linear_regression")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert codegen.recover_numba_cache(module) == []


@reliability("F38")
def test_concurrent_generate_runs_leave_one_complete_module(tmp_path, monkeypatch):
    spec = tmp_path / "rel_concurrent.toml"
    spec.write_text((EXAMPLES / "s5_tiny_mlp.toml").read_text().replace(
        'name = "s5_tiny_mlp"', 'name = "rel_concurrent"'))
    exe = shutil.which("symgrad")
    command = [exe] if exe else [sys.executable, "-m", "symgrad.cli"]
    runs = []
    for k in range(2):  # separate Numba caches, as separate users or xdist workers have
        env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / f"numba{k}"),
               "PYTHONWARNINGS": "ignore"}
        runs.append(subprocess.Popen([*command, "generate", spec.name, "-o", "out"],
                                     cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["rel_concurrent.check.json",
                                                     "rel_concurrent.py"]  # no temp files
    text = (out / "rel_concurrent.py").read_text()
    monkeypatch.chdir(tmp_path)
    d = derive(load_spec(spec.name))
    assert text == render_module(d)
    ast.parse(text)
    report = json.loads((out / "rel_concurrent.check.json").read_text())
    assert report["ok"] and report["module_sha256"] == content_hash(text)


@reliability("F38")
def test_this_session_has_its_own_numba_cache_dir():
    import numba.core.config

    cache = os.environ.get("NUMBA_CACHE_DIR")
    assert cache and numba.core.config.CACHE_DIR == cache
    assert os.path.isdir(cache)


F40_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import numba
    from numba.core import config
    import codegen

    assert config.BOUNDSCHECK == 1, config.BOUNDSCHECK

    @numba.njit
    def poke(a, i):
        return a[i]

    try:
        poke(np.zeros(3), 5)
    except IndexError:
        pass
    else:
        raise SystemExit("NUMBA_BOUNDSCHECK=1 did not enable bounds checks")

    for path in sys.argv[1:]:
        module = codegen.load_module(path)
        rng = np.random.default_rng(0)
        n = 13  # batch 5: two full minibatches and a smaller last one
        X = rng.normal(size=(n, *module.INPUT_SHAPE))
        if module.CLASSES:
            Y = np.arange(n) % module.CLASSES
        elif "softmax_cross_entropy" in module.RULES:
            Y = np.eye(module.TARGET_SHAPE[0])[np.arange(n) % module.TARGET_SHAPE[0]]
        elif module.TASK == "binary":
            Y = (np.arange(n * int(np.prod(module.TARGET_SHAPE))) % 2).astype(float)
        else:
            Y = rng.normal(size=(n, *module.TARGET_SHAPE))
        params = module.init_params(1)
        value, grads = module.loss_and_grad(params, X, Y)
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
        fitted, history, state = module.fit(params, X, Y, optimizer="adam", lr=1e-3, epochs=2,
                                            batch_size=5, seed=3)
        assert history.shape == (2,) and np.all(np.isfinite(history)), history
        print(module.__name__, "ok")
""")


@reliability("F40")
def test_generated_code_passes_with_numba_boundscheck(tmp_path):
    """Every example's generated module, compiled afresh with bounds checks: loss_and_grad and
    fit (Adam, shuffled minibatches with a smaller last one), in float64."""
    paths = [str(GENERATED / f"{name}.py") for name in EXAMPLE_NAMES]
    runs = []
    for k in range(2):  # two processes (CI has two cores), each with a fresh Numba cache
        env = {**os.environ, "NUMBA_BOUNDSCHECK": "1",
               "NUMBA_CACHE_DIR": str(tmp_path / f"numba{k}")}
        runs.append(subprocess.Popen([sys.executable, "-c", F40_SCRIPT, *paths[k::2]], env=env,
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
    stdout = ""
    for run in runs:
        out, err = run.communicate(timeout=1200)
        assert run.returncode == 0, err[-4000:]
        stdout += out
    assert stdout.count(" ok") == len(EXAMPLE_NAMES), stdout
