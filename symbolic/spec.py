"""Model specs: a TOML file or the Python API, both building the same :class:`Spec`.

A spec describes one sample: its input vector, its target, the parameters, optional
elementwise ``[functions]``, the ``[model]`` lines (evaluated in order; the last is the
prediction), the ``[loss]`` and defaults for training runs. The batch loss is the mean of the
per-sample losses plus ``(l2/2)·Σθ²`` over parameters with two or more dimensions.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import SpecError
from .names import name_problem

Shape = tuple[int, ...]

INITS = ("zeros", "he", "glorot", "lecun", "normal")
"""Initialisers: zeros; he = N(0, 2/fan_in); glorot = U(±√(6/(fan_in+fan_out)));
lecun = N(0, 1/fan_in); normal = N(0, 0.01²). A number initialises every entry to it."""

OPTIMIZERS = ("gd", "sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")

MAX_DIM = 1_000_000
MAX_PARAM_ENTRIES = 50_000_000

_TOP_KEYS = ("name", "inputs", "targets", "params", "functions", "model", "loss", "train")
_LOSS_KEYS = ("expr", "l2")
_PARAM_KEYS = ("shape", "init")
_TARGET_KEYS = ("classes", "shape")
_INPUT_KEYS = ("shape",)


@dataclass(frozen=True)
class TrainSpec:
    """Defaults for training runs; every field can be overridden on the command line."""

    optimizer: str = "gd"
    lr: float = 0.01
    epochs: int = 100
    batch_size: int = 0  # 0: the full batch
    seed: int = 0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    rho: float = 0.9
    weight_decay: float = 0.01

    @property
    def hyper(self) -> dict[str, float]:
        """The optimizer's hyper-parameters besides the learning rate."""
        return {"momentum": self.momentum, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps, "rho": self.rho, "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: Shape
    init: str | float

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Spec:
    """A validated model spec. Build one with :func:`load_spec` or :meth:`Spec.build`."""

    name: str
    input_name: str
    input_shape: Shape
    target_name: str
    target_shape: Shape
    classes: int | None
    params: tuple[ParamSpec, ...]
    functions: tuple[tuple[str, str], ...]
    model: tuple[tuple[str, str], ...]
    loss: str
    l2: float = 0.0
    train: TrainSpec = field(default_factory=TrainSpec)
    source: str | None = field(default=None, compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    # -------------------------------------------------------------- front doors
    @classmethod
    def build(cls, *, name: str, inputs: Mapping[str, Any], targets: Mapping[str, Any],
              params: Mapping[str, Any], model: Mapping[str, str], loss: Mapping[str, Any] | str,
              functions: Mapping[str, str] | None = None,
              train: Mapping[str, Any] | None = None) -> "Spec":
        """The Python front door: the same tables as the TOML file, as dicts.

        >>> Spec.build(name="linreg", inputs={"x": 3}, targets={"y": 1},
        ...            params={"w": {"shape": [3]}, "b": {}},
        ...            model={"yhat": "w @ x + b"}, loss="mse(yhat, y)").name
        'linreg'
        """
        data: dict[str, Any] = {"name": name, "inputs": dict(inputs), "targets": dict(targets),
                                "params": dict(params), "model": dict(model),
                                "loss": {"expr": loss} if isinstance(loss, str) else dict(loss)}
        if functions:
            data["functions"] = dict(functions)
        if train:
            data["train"] = dict(train)
        return spec_from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain tables, the inverse of :func:`spec_from_dict`."""
        target: Any = {"classes": self.classes} if self.classes else _size_entry(self.target_shape)
        params = {}
        for p in self.params:
            entry: dict[str, Any] = {"shape": list(p.shape)}
            entry["init"] = p.init
            params[p.name] = entry
        train = {k: getattr(self.train, k) for k in TrainSpec.__dataclass_fields__}
        return {"name": self.name, "inputs": {self.input_name: _size_entry(self.input_shape)},
                "targets": {self.target_name: target}, "params": params,
                "functions": dict(self.functions), "model": dict(self.model),
                "loss": {"expr": self.loss, "l2": self.l2}, "train": train}

    @property
    def digest(self) -> str:
        """SHA-256 of the spec's content (not its file name): ties outputs to a spec."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)

    def error(self, message: str, field: str, hint: str | None = None) -> SpecError:
        """A SpecError located at ``field`` of this spec's file."""
        return SpecError(message, source=self.source, field=field,
                         line=self.lines.get(field), hint=hint)


def _size_entry(shape: Shape) -> Any:
    return shape[0] if len(shape) == 1 and shape[0] > 1 else (1 if not shape else
                                                             {"shape": list(shape)})


def _size_shape(size: int) -> Shape:
    """``x = n`` declares a vector of n entries; ``x = 1`` a scalar (one number per sample)."""
    return (size,) if size > 1 else ()


# ------------------------------------------------------------------------ loading


def load_spec(path: str | Path) -> Spec:
    """Read and validate a TOML spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("spec file not found", source=str(path),
                        hint="check the path (example specs are in examples/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the spec: {exc}", source=str(path)) from None
    return spec_from_toml(text, source=str(path))


def spec_from_toml(text: str, source: str | None = None) -> Spec:
    """Parse TOML text (with line numbers in every error) into a validated Spec."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(match.group(1)) if match else None
        column = match.group(2) if match else None
        what = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        where = f" at column {column}" if column else ""
        hint = "fix the TOML syntax (strings need quotes; each key once)"
        bad_line = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
        odd = [c for c in bad_line if not c.isascii()]
        if odd:
            hint = (f"the line contains the non-ASCII character U+{ord(odd[0]):04X} "
                    f"({unicodedata.name(odd[0], '?')}); names must be ASCII identifiers")
        raise SpecError(f"TOML syntax error{where}: {what}", source=source, line=line,
                        hint=hint) from None
    return spec_from_dict(data, source=source, lines=_key_lines(text))


def _key_lines(text: str) -> dict[str, int]:
    """Map ``table.key`` (and ``table``) to the line where it is written."""
    lines: dict[str, int] = {}
    table = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"\[([A-Za-z0-9_.\-]+)\]", line)
        if header:
            table = header.group(1)
            lines.setdefault(table, number)
            continue
        key = re.match(r"([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=", line)
        if key:
            name = key.group(1).strip('"')
            lines.setdefault(f"{table}.{name}" if table else name, number)
    return lines


def spec_from_dict(data: Mapping[str, Any], source: str | None = None,
                   lines: Mapping[str, int] | None = None) -> Spec:
    """Validate plain tables (as read from TOML) into a Spec; every error names its field."""
    v = _Validator(source, dict(lines or {}))
    return v.spec(data)


class _Validator:
    def __init__(self, source: str | None, lines: dict[str, int]):
        self.source = source
        self.lines = lines

    def fail(self, field: str, message: str, hint: str | None = None) -> SpecError:
        line = self.lines.get(field)
        if line is None and "." in field:
            line = self.lines.get(field.rsplit(".", 1)[0])
        return SpecError(message, source=self.source, field=field, line=line, hint=hint)

    def table(self, data: Mapping[str, Any], key: str, *, required: bool = True) -> dict:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(key, f"the [{key}] table is missing",
                                hint=f"add a [{key}] table (see the README's spec format)")
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"`{key}` must be a table, got {type(value).__name__}")
        return value

    def keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(allowed)}"
                raise self.fail(f"{where}.{key}" if where else str(key),
                                f"unknown key `{key}`" + (f" in [{where}]" if where else ""),
                                hint=hint)

    def name(self, name: str, field: str) -> str:
        problem = name_problem(name)
        if problem:
            raise self.fail(field, f"invalid name: {problem}",
                            hint="rename it to an ASCII identifier such as W1, h or yhat")
        return name

    def integer(self, value: Any, field: str, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be an integer, got {_describe(value)}")
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise self.fail(field, f"must be {bound}, got {value}")
        return value

    def number(self, value: Any, field: str, *, positive: bool = False,
               nonnegative: bool = False, below_one: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a number, got {_describe(value)}",
                            hint="write numbers without quotes, e.g. 0.01")
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(field, f"must be a finite number, got {value}")
        if positive and value <= 0:
            raise self.fail(field, f"must be > 0, got {value}")
        if nonnegative and value < 0:
            raise self.fail(field, f"must be >= 0, got {value}")
        if below_one and not 0 <= value < 1:
            raise self.fail(field, f"must be in [0, 1), got {value}")
        return value

    def shape(self, value: Any, field: str, max_rank: int = 2) -> Shape:
        if not isinstance(value, list) or len(value) > max_rank:
            raise self.fail(field, f"must be a list of at most {max_rank} sizes, got "
                                   f"{_describe(value)}", hint="e.g. shape = [128, 784]")
        return tuple(self.integer(d, field, 1, MAX_DIM) for d in value)

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {_describe(value)}",
                            hint='put formulas in quotes, e.g. h = "relu(W1 @ x + b1)"')
        return value

    # ----------------------------------------------------------------- sections
    def spec(self, data: Mapping[str, Any]) -> Spec:
        if not isinstance(data, Mapping):
            raise self.fail("", "a spec must be a table of tables")
        self.keys(data, _TOP_KEYS, "")
        if "name" not in data:
            raise self.fail("name", "the spec has no `name`", hint='add name = "my_model"')
        name = self.name(self.string(data["name"], "name"), "name")
        input_name, input_shape = self.inputs(self.table(data, "inputs"))
        target_name, target_shape, classes = self.targets(self.table(data, "targets"))
        params = self.params(self.table(data, "params"))
        functions = self.functions(self.table(data, "functions", required=False))
        model = self.model(self.table(data, "model"))
        loss, l2 = self.loss(data.get("loss"))
        train = self.train(self.table(data, "train", required=False))
        seen: dict[str, str] = {}
        for kind, names in (("input", [input_name]), ("target", [target_name]),
                            ("parameter", [p.name for p in params]),
                            ("function", [f for f, _ in functions]),
                            ("model line", [m for m, _ in model])):
            table = {"input": "inputs", "target": "targets", "parameter": "params",
                     "function": "functions", "model line": "model"}[kind]
            for item in names:
                if item in seen:
                    raise self.fail(f"{table}.{item}", f"`{item}` is declared twice (as a "
                                    f"{seen[item]} and as a {kind})", hint="give each a unique name")
                seen[item] = kind
        return Spec(name=name, input_name=input_name, input_shape=input_shape,
                    target_name=target_name, target_shape=target_shape, classes=classes,
                    params=params, functions=functions, model=model, loss=loss, l2=l2,
                    train=train, source=self.source, lines=self.lines)

    def inputs(self, table: dict) -> tuple[str, Shape]:
        if len(table) != 1:
            raise self.fail("inputs", f"[inputs] must declare exactly one input vector, got "
                                      f"{len(table)}", hint="e.g. x = 784")
        ((name, value),) = table.items()
        field = f"inputs.{name}"
        self.name(name, field)
        if isinstance(value, dict):
            self.keys(value, _INPUT_KEYS, field)
            return name, self.shape(value.get("shape", []), f"{field}.shape", max_rank=1)
        return name, _size_shape(self.integer(value, field, 1, MAX_DIM))

    def targets(self, table: dict) -> tuple[str, Shape, int | None]:
        if len(table) != 1:
            raise self.fail("targets", f"[targets] must declare exactly one target, got "
                                       f"{len(table)}", hint="e.g. y = 1, or y = { classes = 10 }")
        ((name, value),) = table.items()
        field = f"targets.{name}"
        self.name(name, field)
        if isinstance(value, dict):
            self.keys(value, _TARGET_KEYS, field)
            if "classes" in value:
                classes = self.integer(value["classes"], f"{field}.classes", 2, MAX_DIM)
                return name, (), classes
            return name, self.shape(value.get("shape", []), f"{field}.shape", max_rank=1), None
        return name, _size_shape(self.integer(value, field, 1, MAX_DIM)), None

    def params(self, table: dict) -> tuple[ParamSpec, ...]:
        if not table:
            raise self.fail("params", "[params] declares no parameters",
                            hint="declare what training should fit, e.g. W = { shape = [10, 784] }")
        out = []
        for name, value in table.items():
            field = f"params.{name}"
            self.name(name, field)
            if not isinstance(value, dict):
                raise self.fail(field, f"must be a table such as {{ shape = [5, 10] }}, got "
                                       f"{_describe(value)}", hint="a scalar is {}")
            self.keys(value, _PARAM_KEYS, field)
            shape = self.shape(value.get("shape", []), f"{field}.shape")
            if math.prod(shape) > MAX_PARAM_ENTRIES:
                raise self.fail(f"{field}.shape", f"{math.prod(shape)} entries is more than the "
                                                  f"limit of {MAX_PARAM_ENTRIES}")
            init: str | float = "glorot" if len(shape) == 2 else "zeros"
            if "init" in value:
                raw = value["init"]
                if isinstance(raw, str):
                    if raw not in INITS:
                        raise self.fail(f"{field}.init", f"unknown init `{raw}`",
                                        hint=f"use one of {', '.join(INITS)} or a number")
                    init = raw
                else:
                    init = self.number(raw, f"{field}.init")
            out.append(ParamSpec(name, shape, init))
        return tuple(out)

    def functions(self, table: dict) -> tuple[tuple[str, str], ...]:
        out = []
        for name, body in table.items():
            field = f"functions.{name}"
            self.name(name, field)
            out.append((name, self.string(body, field)))
        return tuple(out)

    def model(self, table: dict) -> tuple[tuple[str, str], ...]:
        if not table:
            raise self.fail("model", "[model] has no lines",
                            hint='add the prediction, e.g. yhat = "W @ x + b"')
        out = []
        for name, formula in table.items():
            field = f"model.{name}"
            self.name(name, field)
            out.append((name, self.string(formula, field)))
        return tuple(out)

    def loss(self, value: Any) -> tuple[str, float]:
        if value is None:
            raise self.fail("loss", "the [loss] table is missing",
                            hint='add [loss] with expr = "mse(yhat, y)"')
        if not isinstance(value, dict):
            raise self.fail("loss", f"[loss] must be a table, got {_describe(value)}")
        self.keys(value, _LOSS_KEYS, "loss")
        if "expr" not in value:
            raise self.fail("loss.expr", "[loss] has no `expr`",
                            hint='e.g. expr = "softmax_cross_entropy(z, y)"')
        expr = self.string(value["expr"], "loss.expr")
        l2 = self.number(value.get("l2", 0.0), "loss.l2", nonnegative=True)
        return expr, l2

    def train(self, table: dict) -> TrainSpec:
        allowed = tuple(TrainSpec.__dataclass_fields__)
        self.keys(table, allowed, "train")
        values: dict[str, Any] = {}
        for key, raw in table.items():
            field = f"train.{key}"
            if key == "optimizer":
                opt = self.string(raw, field)
                if opt not in OPTIMIZERS:
                    close = difflib.get_close_matches(opt, OPTIMIZERS, n=1)
                    raise self.fail(field, f"unknown optimizer `{opt}`",
                                    hint=f"did you mean `{close[0]}`?" if close
                                    else f"use one of {', '.join(OPTIMIZERS)}")
                values[key] = opt
            elif key in ("epochs",):
                values[key] = self.integer(raw, field, 1)
            elif key in ("batch_size", "seed"):
                values[key] = self.integer(raw, field, 0)
            elif key in ("momentum", "beta1", "beta2", "rho"):
                values[key] = self.number(raw, field, below_one=True)
            elif key == "weight_decay":
                values[key] = self.number(raw, field, nonnegative=True)
            else:
                values[key] = self.number(raw, field, positive=True)
        return TrainSpec(**values)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"
