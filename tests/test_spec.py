"""Specs: the TOML and Python front doors agree, and every bad spec fails with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from symbolic import Spec, SpecError, SpecWarning, derive, load_spec, spec_from_toml

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "data" / "specs"

ISSUE_EXAMPLE = '''
name = "tiny_mlp"
[inputs]
x = 10                        # one sample: a vector of 10 features
[targets]
y = 1                         # a regression target; y = { classes = 10 } for class labels
[params]
W1 = { shape = [5, 10], init = "he" }
b1 = { shape = [5] }          # biases and scalars default to zeros; a scalar is {}
W2 = { shape = [1, 5], init = "glorot" }
b2 = { shape = [1] }
[functions]                   # optional elementwise functions of z, differentiated by SymPy
swish = "z * sigmoid(z)"
[model]                       # evaluated in order; the last line is the prediction
h = "relu(W1 @ x + b1)"
yhat = "W2 @ h + b2"
[loss]
expr = "mse(yhat, y)"
l2 = 0.0                      # optional L2 penalty on weights
[train]                       # defaults for training runs
optimizer = "gd"
lr = 0.01
epochs = 1000
batch_size = 0                # 0 means the full batch
'''


def test_issue_example_loads_as_written():
    spec = spec_from_toml(ISSUE_EXAMPLE, source="tiny.toml")
    assert spec.name == "tiny_mlp"
    assert spec.input_shape == (10,) and spec.target_shape == ()
    assert [(p.name, p.shape, p.init) for p in spec.params] == [
        ("W1", (5, 10), "he"), ("b1", (5,), "zeros"), ("W2", (1, 5), "glorot"),
        ("b2", (1,), "zeros")]
    assert spec.functions == (("swish", "z * sigmoid(z)"),)
    assert spec.train.optimizer == "gd" and spec.train.epochs == 1000
    assert spec.train.batch_size == 0 and spec.train.lr == 0.01


def test_python_api_builds_the_same_spec_as_toml():
    from_toml = spec_from_toml(ISSUE_EXAMPLE)
    built = Spec.build(
        name="tiny_mlp", inputs={"x": 10}, targets={"y": 1},
        params={"W1": {"shape": [5, 10], "init": "he"}, "b1": {"shape": [5]},
                "W2": {"shape": [1, 5], "init": "glorot"}, "b2": {"shape": [1]}},
        functions={"swish": "z * sigmoid(z)"},
        model={"h": "relu(W1 @ x + b1)", "yhat": "W2 @ h + b2"},
        loss={"expr": "mse(yhat, y)", "l2": 0.0},
        train={"optimizer": "gd", "lr": 0.01, "epochs": 1000, "batch_size": 0})
    assert built == from_toml
    assert built.digest == from_toml.digest


def test_digest_changes_with_content():
    a = spec_from_toml(ISSUE_EXAMPLE)
    b = spec_from_toml(ISSUE_EXAMPLE.replace("lr = 0.01", "lr = 0.02"))
    assert a.digest != b.digest


def test_to_dict_round_trips():
    from symbolic import spec_from_dict

    for path in sorted((ROOT / "examples").glob("*.toml")):
        spec = load_spec(path)
        assert spec_from_dict(spec.to_dict()) == spec


# Each bad spec, with the field (and line) its error must name.
BAD_SPECS = {
    "toml_syntax": r"bad_toml_syntax\.toml:23: TOML syntax error at column 6",
    "unknown_function": r":16: model\.h .*function `rellu` is not allowed.*did you mean `relu`",
    "unknown_name": r":17: model\.yhat .*unknown name `W3`.*did you mean `W2`",
    "shape_mismatch": r"model\.yhat .*shape mismatch in `W1 @ h`: \(5, 10\) @ \(5,\)",
    "used_before_defined": r"model\.yhat .*`h` is used before it is defined",
    "keyword_name": r"model\.lambda: invalid name: 'lambda' is a Python keyword",
    "invalid_identifier": r"params\.b 1: invalid name: 'b 1' is not an identifier",
    "import": r"loss\.expr .*function `__import__` is not allowed",
    "dunder_attribute": r"model\.yhat .*attribute `\.__class__` is not allowed",
    "lr_string": r":23: train\.lr: must be a number, got the string '0\.1'",
    "batch_negative": r":24: train\.batch_size: must be >= 0, got -5",
    "unknown_key": r":24: train\.learning_rate: unknown key `learning_rate`",
    "duplicate_key": r":24: TOML syntax error.*Cannot overwrite a value",
    "lr_nan": r"train\.lr: must be a finite number",
    "inf_constant": r"loss\.expr .*`1e400` is not finite",
    "fullwidth_name": r":10: TOML syntax error.*U\+FF37",
    "cyrillic_name": r":11: TOML syntax error.*U\+0430 \(CYRILLIC SMALL LETTER A\)",
    "newline_in_formula": r"loss\.expr .*U\+000A",
    "bidi_in_formula": r"loss\.expr .*U\+202E",
    "huge_exponent": r"loss\.expr .*exponent constant too large",
    "builtin_name": r"params\.sum: invalid name",
    "module_name": r"params\.np: invalid name",
    "label_arithmetic": r"loss\.expr .*uses a class label as a number",
    "missing_loss": r"loss: the \[loss\] table is missing",
}


def test_every_bad_spec_file_is_listed():
    assert sorted(p.stem[4:] for p in BAD.glob("bad_*.toml")) == sorted(BAD_SPECS)


@pytest.mark.parametrize("defect", sorted(BAD_SPECS))
@pytest.mark.reliability("A1")
@pytest.mark.reliability("A2")
@pytest.mark.reliability("A3")
@pytest.mark.reliability("A4")
@pytest.mark.reliability("A6")
@pytest.mark.reliability("A7")
@pytest.mark.reliability("A8")
@pytest.mark.reliability("A9")
@pytest.mark.reliability("A10")
@pytest.mark.reliability("A11")
def test_bad_spec_fails_with_one_clear_error(defect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = BAD / f"bad_{defect}.toml"
    with pytest.raises(SpecError, match=BAD_SPECS[defect]) as info:
        derive(load_spec(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing executed (no PWNED)


@pytest.mark.reliability("A6")
def test_quoted_non_ascii_names_are_rejected():
    text = ISSUE_EXAMPLE.replace("b1 = { shape = [5] }", '"b\u0430" = { shape = [5] }')
    with pytest.raises(SpecError, match=r"params\.b\u0430: invalid name.*U\+0430"):
        spec_from_toml(text)
    fullwidth = ISSUE_EXAMPLE.replace("W1 = {", '"\uff371" = {')
    with pytest.raises(SpecError, match=r"looks like 'W1'"):
        spec_from_toml(fullwidth)


@pytest.mark.parametrize("name", ["match", "sum", "np", "numba", "lambda", "print", "loss"])
@pytest.mark.reliability("A7")
def test_reserved_names_are_rejected(name):
    text = ISSUE_EXAMPLE.replace("b1 = { shape", f"{name} = {{ shape").replace("+ b1", f"+ {name}")
    with pytest.raises(SpecError, match=rf"params\.{name}: invalid name"):
        spec_from_toml(text)


def test_unused_parameter_is_a_warning():
    text = ISSUE_EXAMPLE.replace('b2 = { shape = [1] }', 'b2 = { shape = [1] }\nW3 = { shape = [2, 2] }')
    with pytest.warns(SpecWarning, match=r"params\.W3: the loss does not depend on parameter `W3`"):
        d = derive(spec_from_toml(text))
    assert d.grads["W3"].expr.args[0] == 0


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")
