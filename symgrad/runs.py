"""Training runs: a spec and data in, a trained and evaluated model with its history out.

One library function, :func:`train`, does the whole run; the ``symgrad train`` and ``symgrad demo``
commands (bottom of this file) only parse arguments, call it and print. The steps, in order:

1. load the spec and derive its gradients (``symbolic``);
2. load the data and check it against the spec (feature count, labels, finite values) — before
   any compiled code runs — then split it (a test split when the data has none, then a
   validation split) and optionally standardize it with training-split statistics;
3. check the output folder can be written, load a ``--resume`` checkpoint (refused when it was
   written for another spec or other shapes);
4. get the generated module: modules live in a cache folder keyed by the spec's digest
   (``$SYMGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/symgrad``, else ``~/.cache/symgrad``;
   ``modules/<name>-<digest>/<name>.py``), so a second run of the same spec reuses the verified
   module and Numba's on-disk cache beside it; a missing or stale one is generated and its
   gradients checked against finite differences first (``codegen.generate``);
5. evaluate the loss at the initial parameters (a non-finite value there is a domain error that
   names the sample and the formula), then train with the module's ``fit``; after every epoch:
   validation metrics, a progress event, a checkpoint, early stopping, divergence detection;
6. evaluate on the test split and write the outputs, each file atomically.

Divergence (a NaN/inf loss or parameter) stops the run at once; the checkpoint of the last good
epoch is kept and :attr:`TrainResult.status` is ``"diverged"``. The outputs in ``out``:
``params.npz`` (numeric arrays only, metadata as JSON), ``history.csv``/``history.json``,
``loss.png``, ``report.json``/``report.txt``, ``checkpoint.npz`` and a copy of the generated
module (``<name>.py``) that the parameters belong to.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from symgrad.data import (
    DEFAULT_MAX_BYTES,
    DataError,
    Dataset,
    check_against_spec,
    load_data,
    split,
    standardize,
)
from symgrad.fileio import (
    CheckpointError,
    OutputError,
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
    load_checkpoint,
    save_checkpoint,
    save_npz_atomic,
)

__all__ = [
    "DEFAULT_TEST_SPLIT",
    "DEFAULT_VAL_SPLIT",
    "Progress",
    "PreparedData",
    "TrainOptions",
    "TrainResult",
    "add_demo_arguments",
    "add_train_arguments",
    "demo",
    "demo_command",
    "load_run_module",
    "module_cache_dir",
    "prepare_data",
    "resolve_options",
    "train",
    "train_command",
]

DEFAULT_VAL_SPLIT = 0.1
"""Fraction of the training data held out for validation (early stopping, val metrics)."""
DEFAULT_TEST_SPLIT = 0.25
"""Fraction held out for the final test report when the data has no test set of its own."""
DTYPES = ("float32", "float64")
CHECKPOINT_SECONDS = 5.0
"""Without --checkpoint-every, a checkpoint is saved after the first epoch that ends this many
seconds after the last save (and after the last epoch): a crash loses at most that much work, and
fast epochs are not slowed by a synced write each."""
DEMO_SPEC = "digits_mlp.toml"

ProgressFn = Callable[["Progress"], None]


# ============================================================================ public types


@dataclass(frozen=True)
class Progress:
    """One progress event, passed to the ``progress`` callback of :func:`train`.

    ``stage`` is one of ``"derive"``, ``"data"``, ``"module"``, ``"compile"``; ``"train"``
    (training starts: ``epoch`` is the number of epochs already done, ``epochs`` the total);
    ``"epoch"`` (one epoch finished; ``metrics`` holds ``train_loss``, ``val_loss`` and
    ``val_accuracy`` or ``val_r2``); ``"stopped"`` (early stopping or divergence; ``message``
    says which); ``"evaluate"``, ``"write"``, ``"done"``.
    """

    stage: str
    message: str = ""
    epoch: int = 0
    epochs: int = 0
    metrics: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainOptions:
    """The settings of one run: the spec's ``[train]`` table with the caller's overrides."""

    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    seed: int
    hyper: Mapping[str, float]
    dtype: str = "float64"
    val_split: float = DEFAULT_VAL_SPLIT
    test_split: float = DEFAULT_TEST_SPLIT
    patience: int | None = None
    standardize: bool = False
    checkpoint_every: int | None = None  # None: every CHECKPOINT_SECONDS of training

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer, "lr": self.lr, "epochs": self.epochs,
            "batch_size": self.batch_size, "seed": self.seed, "hyper": dict(self.hyper),
            "dtype": self.dtype, "val_split": self.val_split, "test_split": self.test_split,
            "patience": self.patience, "standardize": self.standardize,
            "checkpoint_every": self.checkpoint_every,
        }


@dataclass
class PreparedData:
    """Data checked against the spec and split; targets in the form the module's loss takes."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    test_from: str  # "data" (the dataset's own test set), "split" or "none"
    mean: np.ndarray | None = None  # standardization statistics of the training split
    std: np.ndarray | None = None
    # each split's rows as 0-based sample numbers of the source (test: of its own test set)
    rows_train: np.ndarray | None = None
    rows_val: np.ndarray | None = None
    rows_test: np.ndarray | None = None

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.X_train),
                "val": 0 if self.X_val is None else len(self.X_val),
                "test": 0 if self.X_test is None else len(self.X_test)}


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained parameters, the history, the metrics, the files.

    ``status`` is ``"completed"``, ``"early_stopped"`` or ``"diverged"``. ``params`` are the final
    parameters (the best validation epoch's with early stopping; the last finite ones after a
    divergence). ``history`` has one dict per epoch, epoch 0 being the initial parameters.
    """

    spec_name: str
    task: str
    status: str
    message: str
    params: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    paths: dict[str, Path]
    options: TrainOptions
    data: PreparedData
    module: Any
    epochs_run: int
    best_epoch: int | None
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status != "diverged"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The model's predictions for raw features ``X`` (standardized as in training)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if self.data.mean is not None and self.data.std is not None:
            X = (X - self.data.mean) / self.data.std
        dtype = np.dtype(self.options.dtype)
        return self.module.predict(_as_params(self.module, self.params, dtype),
                                   np.ascontiguousarray(X, dtype=dtype))

    def summary(self) -> str:
        return _report_text(self.report)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items() if k.startswith("test"))
        return (f"TrainResult({self.spec_name}: {self.status}, {self.epochs_run} epochs"
                f"{', ' + shown if shown else ''})")


# ============================================================================ options


def _positive_float(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return number


def _int_at_least(value: Any, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if number < low:
        raise ValueError(f"{what} must be at least {low}, got {number}")
    return number


def _fraction(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= number < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return number


def resolve_options(spec: Any, *, optimizer: str | None = None, lr: float | None = None,
                    epochs: int | None = None, batch_size: int | None = None,
                    seed: int | None = None, dtype: str = "float64",
                    val_split: float = DEFAULT_VAL_SPLIT, test_split: float = DEFAULT_TEST_SPLIT,
                    patience: int | None = None, standardize: bool = False,
                    checkpoint_every: int | None = None) -> TrainOptions:
    """The spec's ``[train]`` values, each replaced by the caller's when given (not None).

    Raises ValueError naming the option for an invalid value.
    """
    from symbolic.spec import OPTIMIZERS

    t = spec.train
    opt = t.optimizer if optimizer is None else str(optimizer)
    if opt not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {opt!r}; use one of {', '.join(OPTIMIZERS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return TrainOptions(
        optimizer=opt,
        lr=t.lr if lr is None else _positive_float(lr, "lr"),
        epochs=t.epochs if epochs is None else _int_at_least(epochs, 1, "epochs"),
        batch_size=t.batch_size if batch_size is None else _int_at_least(batch_size, 0,
                                                                         "batch_size"),
        seed=t.seed if seed is None else _int_at_least(seed, 0, "seed"),
        hyper=dict(t.hyper),
        dtype=dtype,
        val_split=_fraction(val_split, "val_split"),
        test_split=_fraction(test_split, "test_split"),
        patience=None if patience is None else _int_at_least(patience, 1, "patience"),
        standardize=bool(standardize),
        checkpoint_every=None if checkpoint_every is None else _int_at_least(
            checkpoint_every, 1, "checkpoint_every"),
    )


# ============================================================================ data


def _arrays_dataset(data: Sequence[Any]) -> Dataset:
    """``(X, y)`` or ``(X, y, X_test, y_test)`` arrays as a Dataset, checked like a file's."""
    if len(data) not in (2, 4):
        raise DataError(f"data given as a tuple must be (X, y) or (X, y, X_test, y_test), "
                        f"got {len(data)} items")
    arrays = []
    for name, value in zip(("X", "y", "X_test", "y_test"), data):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise DataError(f"{name} has dtype {array.dtype}; pass numeric arrays")
        if array.dtype.kind == "f":
            bad = np.argwhere(~np.isfinite(array))
            if bad.size:
                where = ", ".join(str(int(i)) for i in bad[0])
                raise DataError(f"{name} has a non-finite value at index ({where}); remove or "
                                "impute such samples before training")
        arrays.append(array)
    X = arrays[0].reshape(len(arrays[0]), -1).astype(np.float64) if arrays[0].ndim != 1 \
        else arrays[0].reshape(-1, 1).astype(np.float64)
    X_test = y_test = None
    if len(arrays) == 4:
        X_test = arrays[2].reshape(len(arrays[2]), -1).astype(np.float64)
        y_test = arrays[3]
    for Xs, ys, what in ((X, arrays[1], "X, y"), (X_test, y_test, "X_test, y_test")):
        if Xs is not None and ys is not None and len(Xs) != len(ys):
            raise DataError(f"({what}): {len(Xs)} samples but {len(ys)} targets")
    return Dataset(X=X, y=arrays[1], X_test=X_test, y_test=y_test,
                   feature_names=[f"x{i}" for i in range(X.shape[1])], target_name="y",
                   source="arrays", n_classes=None)


def targets_for_spec(d: Any, X: np.ndarray, y: np.ndarray, source: str) -> np.ndarray:
    """Check ``X``/``y`` against the derivation's spec; return y as the module's loss takes it.

    Classifiers with ``classes = K`` take int64 labels; a softmax loss on a K-vector target takes
    one-hot rows (integer labels are converted); binary cross-entropy takes 0/1 values.
    Raises DataError naming both sides.
    """
    spec = d.spec
    n_features = math.prod(spec.input_shape)
    target_size = math.prod(spec.target_shape)
    kw = dict(n_features=n_features, source=source, input_name=spec.input_name)
    if spec.classes:
        return check_against_spec(X, y, n_classes=spec.classes, target_size=None, **kw)
    if d.task == "multiclass" and len(spec.target_shape) == 1:
        k = spec.target_shape[0]
        y1 = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y1.ndim == 1:
            labels = check_against_spec(X, y1, n_classes=k, target_size=None, **kw)
            return np.eye(k)[labels]
        Y = check_against_spec(X, y, n_classes=None, target_size=k, **kw)
        bad = (Y < 0) | (Y > 1)
        rows = np.abs(Y.sum(axis=1) - 1.0) > 1e-6
        if np.any(bad) or np.any(rows):
            i = int(np.argmax(np.any(bad, axis=1) | rows))
            raise DataError(f"{source}: sample {i} has target {Y[i].tolist()}, which is not a "
                            f"one-hot row (or class probabilities summing to 1); softmax "
                            f"cross-entropy over {k} classes needs such rows or integer labels "
                            f"0..{k - 1}")
        return Y
    Y = check_against_spec(X, y, n_classes=None, target_size=target_size, **kw)
    if d.task == "binary":
        bad = (Y != 0) & (Y != 1)
        if np.any(bad):
            index = np.argwhere(bad)[0]
            value = Y[tuple(index)]
            reason = "is out of range" if float(value).is_integer() else "is not an integer"
            raise DataError(f"{source}: sample {int(index[0])} has label {_fmt(float(value))}, "
                            f"which {reason}; binary cross-entropy needs labels 0 or 1")
    return Y


def prepare_data(d: Any, data: Any, options: TrainOptions, *, target: str | None = None,
                 x_key: str | None = None, y_key: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> PreparedData:
    """Load ``data`` (a name or path, a Dataset, or a tuple of arrays), check and split it."""
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, (str, os.PathLike)):
        dataset = load_data(os.fspath(data), target=target, x_key=x_key, y_key=y_key,
                            max_bytes=max_bytes)
    elif isinstance(data, (tuple, list)):
        dataset = _arrays_dataset(data)
    else:
        raise DataError(f"data must be a dataset name, a file path, a Dataset or (X, y) arrays, "
                        f"got {type(data).__name__}")
    source = dataset.source
    y = targets_for_spec(d, dataset.X, dataset.y, source)
    X = dataset.X
    rows = np.arange(len(X))
    rows_test = rows_val = None
    if dataset.X_test is not None and dataset.y_test is not None:
        X_test = dataset.X_test
        y_test = targets_for_spec(d, X_test, dataset.y_test, f"{source} (test set)")
        rows_test = np.arange(len(X_test))
        test_from = "data"
    elif options.test_split > 0:
        _need_samples(len(X), options.test_split, "--test-split", source)
        # split() shuffles with the seed only, so the row numbers split the same way
        _, rows, _, rows_test = split(X, rows, test_fraction=options.test_split,
                                      seed=options.seed)
        X, y, X_test, y_test = split(X, y, test_fraction=options.test_split, seed=options.seed)
        test_from = "split"
    else:
        X_test = y_test = None
        test_from = "none"
    X_val = y_val = None
    if options.val_split > 0:
        _need_samples(len(X), options.val_split, "--val-split", source)
        _, rows, _, rows_val = split(X, rows, test_fraction=options.val_split,
                                     seed=options.seed + 1)
        X, y, X_val, y_val = split(X, y, test_fraction=options.val_split, seed=options.seed + 1)
    mean = std = None
    if options.standardize:
        others = [a for a in (X_val, X_test) if a is not None]
        scaled, (mean, std) = standardize(X, *others)
        X, rest = scaled[0], list(scaled[1:])
        if X_val is not None:
            X_val = rest.pop(0)
        if X_test is not None:
            X_test = rest.pop(0)
    return PreparedData(X_train=X, y_train=y, X_val=X_val, y_val=y_val, X_test=X_test,
                        y_test=y_test, source=source, test_from=test_from, mean=mean, std=std,
                        rows_train=rows, rows_val=rows_val, rows_test=rows_test)


def _need_samples(n: int, fraction: float, option: str, source: str) -> None:
    if n < 2 or round(n * fraction) >= n:
        raise DataError(f"{source}: {n} samples are too few to hold out {fraction:g} of them "
                        f"({option}); use more data or {option} 0")


# ============================================================================ the module


def module_cache_dir() -> Path:
    """Where generated modules are kept between runs (see the module docstring)."""
    explicit = os.environ.get("SYMGRAD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "symgrad"


_LOADED: dict[tuple[str, int, int], Any] = {}


def _import_module(path: Path) -> Any:
    """Import a generated module by path, once per process per file version."""
    import codegen

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        _LOADED[key] = codegen.load_module(path)
    return _LOADED[key]


def load_run_module(d: Any, cache_dir: str | os.PathLike[str] | None = None,
                    progress: ProgressFn | None = None) -> tuple[Any, Path]:
    """The verified generated module for derivation ``d`` and its path (reused when current).

    A cached module is reused when its file equals a fresh rendering and its finite-difference
    report beside it says it passed; otherwise ``codegen.generate`` writes and checks it.
    """
    import codegen

    emit = progress or (lambda event: None)
    spec = d.spec
    root = Path(cache_dir) if cache_dir is not None else module_cache_dir()
    folder = root / "modules" / f"{spec.name}-{spec.digest[:16]}"
    path = folder / f"{spec.name}.py"
    if _is_current(d, path):
        emit(Progress("module", f"reusing the verified module {path}"))
        return _import_module(path), path
    try:
        ensure_writable_dir(folder)
    except OutputError:
        folder = Path(tempfile.mkdtemp(prefix="symgrad-module-"))
    emit(Progress("module", f"generating {spec.name}.py and checking its gradients against "
                            "finite differences (the first run compiles with Numba)"))
    path = Path(codegen.generate(d, folder, verify=True))
    return _import_module(path), path


def _is_current(d: Any, path: Path) -> bool:
    import codegen

    report = path.with_suffix(".check.json")
    if not (path.is_file() and report.is_file()):
        return False
    try:
        checked = json.loads(report.read_text(encoding="utf-8"))
        text = path.read_text(encoding="utf-8")
        if not checked.get("ok", False) or text != codegen.render_module(d):
            return False
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return checked.get("module_sha256") in (None, digest)
    except (OSError, ValueError):
        return False


def _as_params(module: Any, arrays: Mapping[str, np.ndarray], dtype: np.dtype) -> Any:
    # np.array, not np.ascontiguousarray: that one turns 0-d (scalar) parameters into 1-d
    return module.Params(**{k: np.array(arrays[k], dtype=dtype, order="C")
                            for k in module.Params._fields})


def _params_dict(params: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in params._asdict().items()}


def _finite_params(params: Any) -> bool:
    return all(np.all(np.isfinite(v)) for v in params)


# -------------------------------------------------------------- optimizer state, flattened


def _flatten_state(state: Any, prefix: str = "opt") -> tuple[Any, dict[str, np.ndarray]]:
    """Optimizer state as (JSON structure, arrays) for a checkpoint; inverse: _unflatten_state."""
    arrays: dict[str, np.ndarray] = {}

    def walk(obj: Any, key: str) -> Any:
        if obj is None:
            return {"kind": "none"}
        if isinstance(obj, str):
            return {"kind": "str", "value": obj}
        if isinstance(obj, (bool, np.bool_)):
            return {"kind": "bool", "value": bool(obj)}
        if isinstance(obj, (int, np.integer)):
            return {"kind": "int", "value": int(obj)}
        if isinstance(obj, (float, np.floating)) and not isinstance(obj, np.ndarray):
            arrays[key] = np.asarray(obj, dtype=np.float64)
            return {"kind": "float", "key": key}
        if isinstance(obj, np.ndarray):
            arrays[key] = np.array(obj, copy=True)
            return {"kind": "array", "key": key}
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return {"kind": "namedtuple", "type": type(obj).__name__,
                    "items": {f: walk(getattr(obj, f), f"{key}.{f}") for f in obj._fields}}
        if isinstance(obj, (tuple, list)):
            return {"kind": type(obj).__name__,
                    "items": [walk(v, f"{key}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            return {"kind": "dict", "items": {str(k): walk(v, f"{key}.{k}")
                                              for k, v in obj.items()}}
        raise TypeError(f"cannot checkpoint optimizer state of type {type(obj).__name__}")

    return walk(state, prefix), arrays


def _unflatten_state(tree: Any, arrays: Mapping[str, np.ndarray], module: Any,
                     dtype: np.dtype) -> Any:
    kind = tree["kind"]
    if kind == "none":
        return None
    if kind in ("bool", "int", "str"):
        return bool(tree["value"]) if kind == "bool" else tree["value"]
    if kind == "float":
        return float(arrays[tree["key"]])
    if kind == "array":
        value = arrays[tree["key"]]
        return np.array(value, dtype=dtype, order="C") if value.dtype.kind == "f" else value
    if kind == "namedtuple":
        items = {k: _unflatten_state(v, arrays, module, dtype) for k, v in tree["items"].items()}
        cls = getattr(module, tree["type"], None)
        if cls is None:
            from collections import namedtuple

            cls = namedtuple(tree["type"], list(items))  # type: ignore[misc]
        return cls(**items)
    if kind in ("tuple", "list"):
        values = [_unflatten_state(v, arrays, module, dtype) for v in tree["items"]]
        return tuple(values) if kind == "tuple" else values
    if kind == "dict":
        return {k: _unflatten_state(v, arrays, module, dtype) for k, v in tree["items"].items()}
    raise CheckpointError(f"unknown optimizer state entry {kind!r} in the checkpoint")


def _checkpoint_names(path: Path) -> list[str]:
    """The array names stored in an .npz (from the zip directory only; nothing is read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile, ValueError):
        return []  # load_checkpoint reports the real problem


# ============================================================================ metrics


def _classify(module: Any, params: Any, X: np.ndarray, Y: np.ndarray) -> float:
    return float(module.accuracy(params, X, Y))


def _r2(module: Any, params: Any, X: np.ndarray, Y: np.ndarray) -> float | None:
    """Coefficient of determination, averaged over outputs (as scikit-learn's r2_score)."""
    pred = np.asarray(module.predict(params, X), dtype=np.float64).reshape(len(X), -1)
    y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    keep = ss_tot > 0
    if not np.any(keep):
        return None
    value = float(np.mean(1.0 - ss_res[keep] / ss_tot[keep]))
    return value if math.isfinite(value) else None


def _evaluate(module: Any, task: str, params: Any, X: np.ndarray | None, Y: np.ndarray | None,
              prefix: str) -> dict[str, float | None]:
    if X is None or Y is None or len(X) == 0:
        return {}
    loss = float(module.loss(params, X, Y))
    out: dict[str, float | None] = {f"{prefix}_loss": loss}
    if not math.isfinite(loss):
        return out
    if task in ("multiclass", "binary"):
        out[f"{prefix}_accuracy"] = _classify(module, params, X, Y)
    else:
        out[f"{prefix}_r2"] = _r2(module, params, X, Y)
    return out


# ============================================================================ domain errors


def _domain_error(d: Any, module: Any, params: Any, X: np.ndarray, Y: np.ndarray,
                  rows: np.ndarray | None, where: str, source: str) -> Exception:
    """Name the first sample whose loss is not finite, and the first formula that went wrong."""
    from symbolic import DomainError

    index = None
    for i in range(len(X)):
        if not math.isfinite(float(module.loss(params, X[i:i + 1], Y[i:i + 1]))):
            index = i
            break
    if index is None:
        return DomainError(f"{source}: the loss on the {where} split is not finite at the "
                           "initial parameters, though every sample's loss alone is; check the "
                           "data's scale")
    sample = int(rows[index]) if rows is not None else index
    formula = _first_bad_formula(d, params, X[index], Y[index])
    return DomainError(f"{source}: sample {sample} (0-based, in file order) gives a non-finite "
                       f"loss at the initial parameters{formula}; the data is outside a "
                       f"formula's domain (e.g. log or sqrt of a value ≤ 0): fix or remove such "
                       f"samples, or change the formula in {d.spec.source or d.spec.name}")


def _first_bad_formula(d: Any, params: Any, x: np.ndarray, y: Any) -> str:
    """`` (model.h = "log(t)" gives nan)``, from the reference evaluator; "" if not found."""
    try:
        from symbolic.evaluate import evaluate

        spec = d.spec
        env: dict = {d.symbol(p.name): np.asarray(getattr(params, p.name), dtype=np.float64)
                     for p in spec.params}
        xs = np.asarray(x, dtype=np.float64)
        env[d.symbol(spec.input_name)] = float(xs.reshape(())) if spec.input_shape == () \
            else xs.reshape(spec.input_shape)
        if spec.classes:
            env[d.symbol(spec.target_name)] = int(y)
        else:
            ys = np.asarray(y, dtype=np.float64)
            env[d.symbol(spec.target_name)] = float(ys.reshape(())) \
                if spec.target_shape == () else ys.reshape(spec.target_shape)
        memo: dict = {}
        formulas = dict(spec.model)
        with np.errstate(all="ignore"):
            for step in d.forward:
                value = np.asarray(evaluate(step.expr, env, memo), dtype=np.float64)
                env[d.symbol(step.name)] = np.broadcast_to(value, step.shape) if step.shape \
                    else float(value)
                if not np.all(np.isfinite(value)):
                    text = formulas.get(step.name, spec.loss)
                    return f' ({step.field} = "{text}" gives {_first_bad_value(value)})'
    except Exception:  # noqa: BLE001 - only a hint; the error is raised either way
        return ""
    return ""


def _first_bad_value(value: np.ndarray) -> str:
    flat = np.ravel(value)
    return str(flat[np.argmax(~np.isfinite(flat))])


# ============================================================================ training


@dataclass
class _RunState:
    history: list[dict[str, Any]]
    best_monitor: float = math.inf
    best_epoch: int | None = None
    best_params: dict[str, np.ndarray] | None = None
    wait: int = 0
    status: str = "completed"
    message: str = ""
    last_good: dict[str, np.ndarray] | None = None  # parameters of the last finite epoch
    last_good_state: tuple[Any, dict[str, np.ndarray]] = ({"kind": "none"}, {})  # its optimizer
    last_good_epoch: int = 0
    last_saved_epoch: int | None = None
    last_save_time: float = 0.0
    last_step: int = 0  # optimizer steps taken before the current epoch


def train(spec_or_path: Any, data: Any, *, target: str | None = None, x_key: str | None = None,
          y_key: str | None = None, epochs: int | None = None, lr: float | None = None,
          optimizer: str | None = None, batch_size: int | None = None,
          val_split: float = DEFAULT_VAL_SPLIT, test_split: float = DEFAULT_TEST_SPLIT,
          seed: int | None = None, dtype: str = "float64",
          out: str | os.PathLike[str] | None = None,
          resume: str | os.PathLike[str] | None = None, patience: int | None = None,
          standardize: bool = False, checkpoint_every: int | None = None,
          max_bytes: int = DEFAULT_MAX_BYTES, cache_dir: str | os.PathLike[str] | None = None,
          progress: ProgressFn | None = None, module: Any = None) -> TrainResult:
    """Train the model of ``spec_or_path`` on ``data``; the library behind ``symgrad train``.

    ``spec_or_path``: a spec file path, a :class:`symbolic.Spec` or a derivation. ``data``: a
    bundled dataset name (``"digits"``), a ``.csv``/``.npz``/``.npy`` path or MNIST IDX folder, a
    :class:`symgrad.data.Dataset`, or ``(X, y)`` / ``(X, y, X_test, y_test)`` arrays. Options
    left as None take the spec's ``[train]`` value. ``out``: the output folder (None: write no
    files; the CLI defaults to ``runs/<name>``). ``progress`` receives :class:`Progress` events.
    ``module``: a loaded generated module to use instead of the cached/generated one.

    Raises SpecError, DataError, DomainError, OutputError, CheckpointError, codegen errors, and
    ValueError for an invalid option. A divergent run does not raise: the result's status is
    ``"diverged"`` (the CLI exits 1).
    """
    from symbolic import Derivation, Spec, derive, load_spec

    emit = progress or (lambda event: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. spec and derivation
    if isinstance(spec_or_path, Derivation):
        d = spec_or_path
    else:
        spec = spec_or_path if isinstance(spec_or_path, Spec) else load_spec(spec_or_path)
        emit(Progress("derive", f"deriving the gradients of {spec.name}"))
        d = derive(spec)
    spec = d.spec
    task = d.task
    options = resolve_options(spec, optimizer=optimizer, lr=lr, epochs=epochs,
                              batch_size=batch_size, seed=seed, dtype=dtype,
                              val_split=val_split, test_split=test_split, patience=patience,
                              standardize=standardize, checkpoint_every=checkpoint_every)
    np_dtype = np.dtype(options.dtype)

    # 2. data, checked against the spec before any compiled code runs
    if isinstance(data, (str, os.PathLike)):
        emit(Progress("data", f"loading {os.fspath(data)}"))
    prepared = prepare_data(d, data, options, target=target, x_key=x_key, y_key=y_key,
                            max_bytes=max_bytes)

    # 3. outputs and resume point, before any long work
    created = out is not None and not Path(out).exists()
    out_dir = None if out is None else ensure_writable_dir(out)
    try:
        checkpoint = None
        if resume is not None:
            checkpoint = _load_resume(Path(resume), spec, options, prepared, max_bytes)
        timings["prepare_s"] = time.perf_counter() - t0

        # 4. the verified module
        t1 = time.perf_counter()
        if module is None:
            module, module_path = load_run_module(d, cache_dir, emit)
        else:
            module_path = Path(getattr(module, "__file__", "") or "")
        timings["module_s"] = time.perf_counter() - t1

        cast = _caster(task, spec, np_dtype)
        X_tr, Y_tr = cast(prepared.X_train, prepared.y_train)
        X_va, Y_va = cast(prepared.X_val, prepared.y_val)
        X_te, Y_te = cast(prepared.X_test, prepared.y_test)

        # 5. initial point (fresh or resumed), checked for the formulas' domain
        state = None
        start_epoch = 0
        run = _RunState(history=[])
        if checkpoint is None:
            params = module.init_params(seed=options.seed, dtype=np_dtype)
        else:
            params = _as_params(module, {k: checkpoint.params[k] for k in module.Params._fields},
                                np_dtype)
            extra = checkpoint.extra
            if extra.get("state") is not None:
                state = _unflatten_state(extra["state"], checkpoint.params, module, np_dtype)
            start_epoch = checkpoint.epoch
            run.history = [dict(h) for h in extra.get("history", [])]
            es = extra.get("early_stopping") or {}
            run.best_monitor = math.inf if es.get("best") is None else float(es["best"])
            run.best_epoch = es.get("best_epoch")
            run.wait = int(es.get("wait", 0))
            best = {k[len("best."):]: v for k, v in checkpoint.params.items()
                    if k.startswith("best.")}
            run.best_params = best or None
            run.last_saved_epoch = start_epoch

        # compile (or load from Numba's cache) before the progress bar starts, so that long
        # work is announced rather than looking like a frozen first epoch
        emit(Progress("compile", "compiling the training loop with Numba (the first run of a "
                                 "spec only; later runs load it from the cache)"))
        with np.errstate(all="ignore"):
            module.fit(params, X_tr[:2], Y_tr[:2], optimizer=options.optimizer, lr=options.lr,
                       epochs=0, batch_size=options.batch_size, seed=options.seed,
                       state=state, start_epoch=start_epoch, **options.hyper)
            initial = _evaluate(module, task, params, X_tr, Y_tr, "train")
            initial.update(_evaluate(module, task, params, X_va, Y_va, "val"))
            test_loss = None if X_te is None else float(module.loss(params, X_te, Y_te))
        # a non-finite loss at the start is the data leaving a formula's domain
        for value, Xs, Ys, rows, name in (
                (initial.get("train_loss"), X_tr, Y_tr, prepared.rows_train, "train"),
                (initial.get("val_loss"), X_va, Y_va, prepared.rows_val, "validation"),
                (test_loss, X_te, Y_te, prepared.rows_test, "test")):
            if checkpoint is None and value is not None and not math.isfinite(value):
                raise _domain_error(d, module, params, Xs, Ys, rows, name, prepared.source)
        if checkpoint is None:
            first = {k: v for k, v in initial.items()
                     if X_va is None or k not in ("train_accuracy", "train_r2")}
            run.history = [_record(0, first, 0.0)]
        run.last_good = _params_dict(params)
        run.last_good_state = _flatten_state(state)
        run.last_good_epoch = start_epoch

        monitor = "val_loss" if X_va is not None else "train_loss"
        steps_per_epoch = _steps_per_epoch(len(X_tr), options.batch_size, options.optimizer)
        run.last_step = _step_count(state, start_epoch * steps_per_epoch)

        def save_checkpoint_now() -> None:
            """Save the last good epoch: parameters, optimizer state, history, early stopping."""
            if out_dir is None:
                return
            epoch = run.last_good_epoch
            tree, state_arrays = run.last_good_state
            arrays = {**(run.last_good or {}), **state_arrays}
            if run.best_params is not None:
                arrays.update({f"best.{k}": v for k, v in run.best_params.items()})
            history = [h for h in run.history if h["epoch"] <= epoch]
            extra = {
                "state": tree,
                "history": history,
                "options": options.to_dict(),
                "data": _data_fingerprint(prepared, options),
                "early_stopping": {"best": None if not math.isfinite(run.best_monitor)
                                   else run.best_monitor, "best_epoch": run.best_epoch,
                                   "wait": run.wait, "monitor": monitor},
            }
            save_checkpoint(out_dir / "checkpoint.npz", arrays, spec_hash=spec.digest,
                            epoch=epoch, history=[h["train_loss"] for h in history],
                            extra=_json_safe(extra))
            run.last_saved_epoch = epoch
            run.last_save_time = time.perf_counter()

        # a checkpoint of the starting point: there is always a last good one to go back to
        if checkpoint is None:
            save_checkpoint_now()
        run.last_save_time = time.perf_counter()
    except BaseException:
        # an error before training: leave no empty output folder behind
        if created and out_dir is not None:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise

    emit(Progress("train", f"training {spec.name}: {options.optimizer}, lr {options.lr:g}, "
                           f"batch {options.batch_size or 'full'}, {options.dtype}",
                  epoch=start_epoch, epochs=options.epochs, metrics=initial))
    t2 = time.perf_counter()
    tick = [t2]

    def callback(epoch: int, loss: float, current: Any, opt_state: Any) -> bool:
        # ``epoch`` is the 0-based index of the epoch just finished
        done = epoch + 1
        now = time.perf_counter()
        seconds, tick[0] = now - tick[0], now
        with np.errstate(all="ignore"):
            metrics: dict[str, float | None] = {"train_loss": float(loss)}
            metrics.update(_evaluate(module, task, current, X_va, Y_va, "val"))
            if X_va is None and math.isfinite(float(loss)):
                # no validation split: the training split's accuracy / R² instead
                fit_metrics = _evaluate(module, task, current, X_tr, Y_tr, "train")
                metrics.update({k: v for k, v in fit_metrics.items() if k != "train_loss"})
        run.history.append(_record(done, metrics, seconds))
        finite = math.isfinite(float(loss)) and _finite_params(current) and \
            all(math.isfinite(v) for k, v in metrics.items() if k.endswith("_loss") and
                v is not None)
        step = _step_count(opt_state, done * steps_per_epoch)
        first_step, run.last_step = run.last_step + 1, step
        if not finite:
            last = run.history[-2]["train_loss"] if len(run.history) > 1 else None
            where = (f"step {step}" if step == first_step
                     else f"steps {first_step}-{step}")
            run.status = "diverged"
            if run.last_saved_epoch != run.last_good_epoch:
                save_checkpoint_now()  # the last good epoch, not the diverged one
            if not math.isfinite(float(loss)):
                what = f"the training loss became {_fmt(float(loss))}"
            elif not _finite_params(current):
                what = "the parameters became non-finite"
            else:
                what = (f"the validation loss became {_fmt(metrics.get('val_loss'))} "
                        f"(training loss {_fmt(float(loss))})")
            run.message = (
                f"training diverged in epoch {done} ({where}): {what}; the last finite "
                f"training loss was {_fmt(last)} at epoch "
                f"{run.last_good_epoch}; lower the learning rate (now {options.lr:g}), e.g. "
                f"--lr {options.lr / 10:g}")
            emit(Progress("stopped", run.message, epoch=done, epochs=options.epochs,
                          metrics=metrics))
            return False
        run.last_good = _params_dict(current)
        run.last_good_state = _flatten_state(opt_state)
        run.last_good_epoch = done
        stop = False
        if options.patience is not None:
            value = metrics.get(monitor)
            if value is not None and value < run.best_monitor:
                run.best_monitor, run.best_epoch, run.wait = value, done, 0
                run.best_params = _params_dict(current)
            else:
                run.wait += 1
                if run.wait >= options.patience:
                    stop = True
                    run.status = "early_stopped"
                    run.message = (f"early stopping after epoch {done}: {monitor} has not "
                                   f"improved for {options.patience} epochs; keeping epoch "
                                   f"{run.best_epoch} ({monitor} {_fmt(run.best_monitor)})")
        every = options.checkpoint_every
        due = (done % every == 0) if every is not None else \
            time.perf_counter() - run.last_save_time >= CHECKPOINT_SECONDS
        if due or stop or done == options.epochs:
            save_checkpoint_now()
        emit(Progress("epoch", epoch=done, epochs=options.epochs, metrics=metrics))
        if stop:
            emit(Progress("stopped", run.message, epoch=done, epochs=options.epochs,
                          metrics=metrics))
            return False
        return True

    if start_epoch < options.epochs:
        with np.errstate(all="ignore"):
            final, _, state = module.fit(
                params, X_tr, Y_tr, optimizer=options.optimizer, lr=options.lr,
                epochs=options.epochs - start_epoch, batch_size=options.batch_size,
                seed=options.seed,
                callback=callback, state=state, start_epoch=start_epoch, **options.hyper)
        params = final
    timings["train_s"] = time.perf_counter() - t2

    # final parameters: last good after divergence, best with early stopping
    epochs_run = run.history[-1]["epoch"] if run.history else start_epoch
    if run.status == "diverged":
        params = _as_params(module, run.last_good or {}, np_dtype)
        epochs_run = run.last_good_epoch
    elif options.patience is not None and run.best_params is not None:
        params = _as_params(module, run.best_params, np_dtype)

    # 6. evaluation
    emit(Progress("evaluate", "evaluating"))
    with np.errstate(all="ignore"):
        metrics = _evaluate(module, task, params, X_tr, Y_tr, "train")
        metrics.update(_evaluate(module, task, params, X_va, Y_va, "val"))
        metrics.update(_evaluate(module, task, params, X_te, Y_te, "test"))
    timings["total_s"] = time.perf_counter() - t0

    if run.status == "completed":
        run.message = f"trained {epochs_run} epochs"
    final_params = _params_dict(params)
    report = _make_report(spec, task, options, prepared, run, metrics, final_params, timings,
                          module_path, epochs_run, resume)
    paths: dict[str, Path] = {}
    if out_dir is not None:
        emit(Progress("write", f"writing outputs to {out_dir}"))
        paths = _write_outputs(out_dir, spec, task, run, report, final_params, prepared,
                               options, module_path)
        report["files"] = {k: str(v) for k, v in paths.items()}
    emit(Progress("done", run.message, epoch=epochs_run, epochs=options.epochs,
                  metrics=metrics))
    return TrainResult(spec_name=spec.name, task=task, status=run.status, message=run.message,
                       params=final_params, history=run.history, metrics=metrics, paths=paths,
                       options=options, data=prepared, module=module, epochs_run=epochs_run,
                       best_epoch=run.best_epoch, report=report)


def _caster(task: str, spec: Any, dtype: np.dtype) -> Callable[..., tuple[Any, Any]]:
    def cast(X: np.ndarray | None, Y: np.ndarray | None) -> tuple[Any, Any]:
        if X is None or Y is None:
            return None, None
        Xc = np.ascontiguousarray(X.reshape(len(X), *spec.input_shape), dtype=dtype)
        if spec.classes:
            return Xc, np.ascontiguousarray(Y, dtype=np.int64)
        return Xc, np.ascontiguousarray(Y, dtype=dtype)
    return cast


def _steps_per_epoch(n: int, batch_size: int, optimizer: str) -> int:
    """Optimizer steps per epoch (gd always uses the full batch)."""
    full = optimizer == "gd" or batch_size <= 0 or batch_size >= n
    return 1 if full else math.ceil(n / batch_size)


def _step_count(state: Any, fallback: int) -> int:
    """The optimizer's step count from its state (generated modules: ``state["step"]``)."""
    if isinstance(state, dict) and isinstance(state.get("step"), (int, np.integer)):
        return int(state["step"])
    return fallback


def _record(epoch: int, metrics: Mapping[str, float | None], seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch}
    for key in ("train_loss", "train_accuracy", "train_r2", "val_loss", "val_accuracy",
                "val_r2"):
        if key in metrics:
            row[key] = metrics[key]
    row["seconds"] = round(seconds, 6)
    return row


def _data_fingerprint(prepared: PreparedData, options: TrainOptions) -> dict[str, Any]:
    """What must match for a resumed run to see the same training data."""
    return {"source": prepared.source, "sizes": prepared.sizes(), "seed": options.seed,
            "val_split": options.val_split, "test_split": options.test_split,
            "standardize": options.standardize}


def _load_resume(path: Path, spec: Any, options: TrainOptions, prepared: PreparedData,
                 max_bytes: int) -> Any:
    """Load and check a checkpoint: spec hash and shapes (fileio), optimizer, data options."""
    shapes: dict[str, tuple[int, ...]] = {p.name: tuple(p.shape) for p in spec.params}
    extras = [n for n in _checkpoint_names(path) if n.startswith(("opt.", "best."))]
    if extras:
        # optimizer-state arrays: their shapes come from the file (checked again when used)
        from symgrad.fileio import FileFormatError, load_npz_safe

        try:
            arrays, _ = load_npz_safe(path, max_bytes=max_bytes)
        except FileFormatError:
            arrays = {}  # load_checkpoint below reports the problem
        for name in extras:
            base = name[len("best."):]
            if name.startswith("best.") and base in shapes:
                shapes[name] = shapes[base]
            elif name in arrays:
                shapes[name] = tuple(arrays[name].shape)
    checkpoint = load_checkpoint(path, spec_hash=spec.digest, shapes=shapes,
                                 max_bytes=max_bytes)
    extra = checkpoint.extra
    old = extra.get("options") or {}
    if old.get("optimizer") not in (None, options.optimizer):
        raise CheckpointError(f"cannot resume from {path}: it was trained with optimizer "
                              f"{old['optimizer']}, this run asks for {options.optimizer}; use "
                              f"--optimizer {old['optimizer']} or start a fresh run")
    then = extra.get("data") or {}
    now = _json_safe(_data_fingerprint(prepared, options))
    flags = {"source": "--data", "seed": "--seed", "val_split": "--val-split",
             "test_split": "--test-split", "standardize": "--standardize",
             "sizes": "the data (sample counts)"}
    for key, flag in flags.items():
        if key in then and then[key] != now[key]:
            raise CheckpointError(f"cannot resume from {path}: it was trained with {key} "
                                  f"{then[key]}, this run has {now[key]}; resume with the same "
                                  f"{flag} (the data splits must match) or start a fresh run")
    return checkpoint


def _json_safe(obj: Any) -> Any:
    """Plain JSON: numpy scalars to Python, non-finite floats to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


# ============================================================================ outputs


def _make_report(spec: Any, task: str, options: TrainOptions, prepared: PreparedData,
                 run: _RunState, metrics: dict[str, Any], params: dict[str, np.ndarray],
                 timings: dict[str, float], module_path: Path, epochs_run: int,
                 resume: Any) -> dict[str, Any]:
    import numba

    import symgrad

    report = {
        "spec": {"name": spec.name, "source": spec.source, "digest": spec.digest,
                 "task": task, "classes": spec.classes,
                 "parameters": int(sum(v.size for v in params.values()))},
        "status": run.status,
        "message": run.message,
        "epochs_run": epochs_run,
        "best_epoch": run.best_epoch,
        "resumed_from": None if resume is None else str(resume),
        "options": options.to_dict(),
        "data": {"source": prepared.source, "test_set": prepared.test_from,
                 "samples": prepared.sizes(), "standardized": options.standardize},
        "metrics": metrics,
        "module": str(module_path),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": {"symgrad": getattr(symgrad, "__version__", None),
                     "python": platform.python_version(), "numpy": np.__version__,
                     "numba": numba.__version__},
    }
    return _json_safe(report)


def _report_text(report: Mapping[str, Any]) -> str:
    spec, data, opts, m = report["spec"], report["data"], report["options"], report["metrics"]
    sizes = data["samples"]
    lines = [
        f"symgrad training run: {spec['name']} ({spec['task']}, {spec['parameters']} parameters)",
        f"status: {report['status']} — {report['message']}",
        f"data: {data['source']}: {sizes['train']} train / {sizes['val']} validation / "
        f"{sizes['test']} test samples"
        + (" (standardized)" if data["standardized"] else ""),
        f"optimizer: {opts['optimizer']}, lr {opts['lr']:g}, batch "
        f"{opts['batch_size'] or 'full'}, {opts['dtype']}, seed {opts['seed']}, "
        f"{report['epochs_run']} of {opts['epochs']} epochs",
    ]
    for split_name in ("train", "val", "test"):
        parts = []
        for key, label in (("loss", "loss"), ("accuracy", "accuracy"), ("r2", "R²")):
            value = m.get(f"{split_name}_{key}")
            if value is None:
                continue
            parts.append(f"{label} {value:.2%}" if key == "accuracy" else f"{label} {value:.6g}")
        if parts:
            lines.append(f"{split_name}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def _history_csv(history: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow(["" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float)
                         else row[c] for c in columns])
    return buffer.getvalue()


def plot_history(history: list[dict[str, Any]], title: str, *, best_epoch: int | None = None,
                 diverged_at: int | None = None) -> bytes:
    """The loss curves (and accuracy or R²) as PNG bytes; matplotlib's Agg canvas, no pyplot."""
    import warnings

    # a diverging run's losses reach 1e300: matplotlib's log scale overflows quietly then
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _plot(history, title, best_epoch, diverged_at)


def _plot(history: list[dict[str, Any]], title: str, best_epoch: int | None,
          diverged_at: int | None) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = next((k for k in ("val_accuracy", "val_r2", "train_accuracy", "train_r2")
                   if any(h.get(k) is not None for h in history)), None)
    fig = Figure(figsize=(9 if metric else 6, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if metric else 1, squeeze=False)[0]
    ax = axes[0]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(h["epoch"], h[key]) for h in history
               if h.get(key) is not None and math.isfinite(h[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
    values = [v for key in ("train_loss", "val_loss") for v in series(key)[1]]
    if values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                   label=f"best epoch ({best_epoch})")
    if diverged_at is not None:
        ax.axvline(diverged_at, color="red", linestyle=":", linewidth=1,
                   label=f"diverged ({diverged_at})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if metric:
        xs, ys = series(metric)
        axes[1].plot(xs, ys, color="tab:green")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel(("validation " if metric.startswith("val") else "training ")
                           + ("accuracy" if metric.endswith("accuracy") else "R²"))
        axes[1].grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _write_outputs(out_dir: Path, spec: Any, task: str, run: _RunState, report: dict[str, Any],
                   params: dict[str, np.ndarray], prepared: PreparedData,
                   options: TrainOptions, module_path: Path) -> dict[str, Path]:
    paths = {name: out_dir / name for name in ("params.npz", "history.csv", "history.json",
                                               "loss.png", "report.json", "report.txt")}
    meta = {"spec": spec.name, "spec_digest": spec.digest, "task": task,
            "classes": spec.classes, "dtype": options.dtype, "epochs": report["epochs_run"],
            "status": run.status,
            "standardize": None if prepared.mean is None else {
                "mean": [float(v) for v in prepared.mean],
                "std": [float(v) for v in np.asarray(prepared.std)]}}
    save_npz_atomic(paths["params.npz"], params, meta)
    atomic_write_text(paths["history.csv"], _history_csv(run.history))
    atomic_write_text(paths["history.json"],
                      json.dumps(_json_safe(run.history), indent=1) + "\n")
    diverged = run.history[-1]["epoch"] if run.status == "diverged" else None
    atomic_write_bytes(paths["loss.png"],
                       plot_history(run.history, f"{spec.name} ({options.optimizer}, "
                                                 f"lr {options.lr:g})",
                                    best_epoch=run.best_epoch if options.patience else None,
                                    diverged_at=diverged))
    if module_path.is_file():
        paths["module"] = out_dir / module_path.name
        atomic_write_bytes(paths["module"], module_path.read_bytes())
    if (out_dir / "checkpoint.npz").is_file():
        paths["checkpoint.npz"] = out_dir / "checkpoint.npz"
    report["files"] = {k: str(v) for k, v in paths.items()}
    atomic_write_text(paths["report.txt"], _report_text(report))
    atomic_write_text(paths["report.json"], json.dumps(report, indent=2) + "\n")
    return paths


# ============================================================================ the demo


def demo_spec() -> Any:
    """The bundled 64→128 ReLU→10 digits spec, read as a package resource."""
    from importlib import resources

    from symbolic import spec_from_toml

    text = (resources.files("symgrad") / "specs" / DEMO_SPEC).read_text(encoding="utf-8")
    return spec_from_toml(text, source=f"symgrad/specs/{DEMO_SPEC}")


def write_derivation(d: Any, out_dir: Path, report: Any = None) -> list[Path]:
    """Write ``derivation.tex`` (and its graph, when Graphviz is installed) into ``out_dir``.

    Integration point: ``symbolic.latex.write_latex(derivation, path, report=...)``; returns []
    when that module is not available in this build.
    """
    try:
        from symbolic.latex import write_latex
    except ImportError:
        return []
    return [Path(p) for p in write_latex(d, out_dir / "derivation.tex", report=report)]


def demo(out: str | os.PathLike[str] = "runs/demo", *, epochs: int | None = None,
         progress: ProgressFn | None = None, cache_dir: str | os.PathLike[str] | None = None,
         ) -> tuple[TrainResult, list[Path]]:
    """Derive, document, generate, verify and train the digits network; see ``symgrad demo``.

    Returns the training result and the derivation files written.
    """
    import codegen
    from symbolic import derive

    emit = progress or (lambda event: None)
    spec = demo_spec()
    emit(Progress("derive", f"deriving the gradients of {spec.name} "
                            "(64 → 128 ReLU → 10 softmax cross-entropy)"))
    d = derive(spec)
    out_dir = ensure_writable_dir(out)
    module, _ = load_run_module(d, cache_dir, emit)
    emit(Progress("module", "checking the module's gradients against central finite "
                            "differences (float64)"))
    report = codegen.verify_module(module, d)
    if not report.ok:
        raise codegen.VerificationError(spec.name, report)
    emit(Progress("module", f"gradients verified: {report.status}, max error/tolerance "
                            f"{report.margin:.2g}"))
    tex = write_derivation(d, out_dir, report)
    emit(Progress("data", "loading the bundled digits (8×8 pixels 0…16, scaled to [0, 1])"))
    digits = load_data("digits")
    # pixels to [0, 1], as image data usually is (and as Keras' MNIST is /255)
    scaled = Dataset(X=digits.X / 16.0, y=digits.y, X_test=None, y_test=None,
                     feature_names=digits.feature_names, target_name=digits.target_name,
                     source="digits (pixels / 16)", n_classes=digits.n_classes)
    result = train(d, scaled, epochs=epochs, out=out_dir, progress=progress, module=module)
    result.report["verification"] = {"status": report.status, "margin": report.margin}
    return result, tex


# ============================================================================ the CLI


def _arg(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a validator that raises ValueError (argparse shows its message)."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``symgrad train``; options left out take the spec's ``[train]`` values."""
    from symbolic.spec import OPTIMIZERS

    parser.add_argument("spec", type=Path, help="the model spec (TOML)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="SOURCE",
                   help="a bundled dataset (digits, iris, breast_cancer, diabetes), a .csv / .npz "
                        "/ .npy file, a Keras mnist.npz or a folder of MNIST IDX files")
    g.add_argument("--target", metavar="COL",
                   help="CSV: the target column's name (default: the last column); .npy: its "
                        "index")
    g.add_argument("--x-key", metavar="KEY", help=".npz: the features array's name")
    g.add_argument("--y-key", metavar="KEY", help=".npz: the targets array's name")
    g.add_argument("--val-split", type=_arg(lambda s: _fraction(s, "--val-split")),
                   default=DEFAULT_VAL_SPLIT, metavar="F",
                   help=f"fraction of the training data held out for validation (default "
                        f"{DEFAULT_VAL_SPLIT}; 0: none)")
    g.add_argument("--test-split", type=_arg(lambda s: _fraction(s, "--test-split")),
                   default=DEFAULT_TEST_SPLIT, metavar="F",
                   help=f"fraction held out for the test report when the data has no test set "
                        f"(default {DEFAULT_TEST_SPLIT}; 0: none)")
    g.add_argument("--standardize", action="store_true",
                   help="scale features to zero mean, unit variance (training-split statistics)")
    g.add_argument("--max-bytes", type=_arg(lambda s: _int_at_least(s, 1, "--max-bytes")),
                   default=DEFAULT_MAX_BYTES, metavar="N",
                   help="refuse data files that would need more memory than this (default 2 GiB)")
    g = parser.add_argument_group("training (default: the spec's [train] table)")
    g.add_argument("--epochs", type=_arg(lambda s: _int_at_least(s, 1, "--epochs")),
                   metavar="N", help="number of epochs (in total, when resuming)")
    g.add_argument("--lr", type=_arg(lambda s: _positive_float(s, "--lr")), metavar="X",
                   help="learning rate")
    g.add_argument("--optimizer", choices=OPTIMIZERS, metavar="NAME",
                   help=f"one of {', '.join(OPTIMIZERS)}")
    g.add_argument("--batch-size", type=_arg(lambda s: _int_at_least(s, 0, "--batch-size")),
                   metavar="B", help="minibatch size (0: the full batch)")
    g.add_argument("--seed", type=_arg(lambda s: _int_at_least(s, 0, "--seed")), metavar="S",
                   help="seed of the initialisation, the data splits and the shuffling")
    g.add_argument("--dtype", choices=DTYPES, default="float64",
                   help="training precision (default float64; float32 is faster on big data)")
    g.add_argument("--patience", type=_arg(lambda s: _int_at_least(s, 1, "--patience")),
                   metavar="P",
                   help="early stopping: stop after P epochs without a lower validation loss "
                        "and keep the best epoch's parameters")
    g = parser.add_argument_group("outputs")
    g.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: runs/<spec name>)")
    g.add_argument("--resume", type=Path, metavar="CHECKPOINT",
                   help="continue from a checkpoint.npz of an earlier run of the same spec")
    g.add_argument("--checkpoint-every",
                   type=_arg(lambda s: _int_at_least(s, 1, "--checkpoint-every")),
                   metavar="K", help=f"save checkpoint.npz every K epochs (default: after the "
                                     f"first epoch {CHECKPOINT_SECONDS:g} s after the last save, "
                                     f"and at the end; always the last good epoch)")
    g.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where generated modules are kept (default $SYMGRAD_CACHE_DIR or "
                        "~/.cache/symgrad)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output on stderr")


class _Console:
    """Progress events as stage lines and a tqdm bar per run on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None
        self.task = ""

    def __call__(self, event: Progress) -> None:
        if self.quiet:
            return
        if event.stage == "train":
            from tqdm.auto import tqdm

            self.close()
            self.bar = tqdm(total=event.epochs, initial=event.epoch, unit="epoch",
                            file=sys.stderr, dynamic_ncols=True, leave=True,
                            desc=event.message.split(":", 1)[0])
        elif event.stage == "epoch" and self.bar is not None:
            m = event.metrics
            shown: dict[str, str] = {"loss": _fmt(m.get("train_loss"))}
            if m.get("val_loss") is not None:
                shown["val_loss"] = _fmt(m.get("val_loss"))
            for key, label in (("val_accuracy", "val_acc"), ("train_accuracy", "acc")):
                if m.get(key) is not None:
                    shown[label] = f"{m[key]:.2%}"
            for key in ("val_r2", "train_r2"):
                if m.get(key) is not None:
                    shown[key.replace("train_", "")] = f"{m[key]:.4f}"
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        elif event.stage in ("stopped", "done", "evaluate", "write"):
            self.close()
            if event.stage == "stopped":
                print(f"symgrad: {event.message}", file=sys.stderr)
        else:
            print(f"symgrad: {event.message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_FILE_NOTES = {
    "derivation.tex": "the derivation, every δ and gradient (LaTeX)",
    "derivation-graph.pdf": "the computation graph, included by derivation.tex",
    "params.npz": "trained parameters (numpy.load, no pickles)",
    "history.csv": "loss and metrics per epoch",
    "history.json": "the same, as JSON",
    "loss.png": "loss curves",
    "report.json": "the run's report (options, data, metrics)",
    "report.txt": "the same, short and readable",
    "checkpoint.npz": "resume with --resume",
    "module": "the generated training module these parameters belong to",
}


def _print_result(result: TrainResult, extra: Mapping[str, Path] | None = None) -> None:
    print(_report_text(result.report), end="")
    files = {**(extra or {}), **result.paths}
    if files:
        folder = Path(os.path.commonpath([str(p.parent) for p in files.values()]))
        print(f"outputs in {folder}{os.sep}:")
        width = max(len(p.name) for p in files.values())
        for key, path in files.items():
            print(f"  {path.name:<{width}}  {_FILE_NOTES.get(key, '')}".rstrip())


def train_command(args: argparse.Namespace) -> int:
    """``symgrad train``: exit 0, or 1 when training diverged; other errors propagate."""
    from symbolic import load_spec

    spec = load_spec(args.spec)
    out = args.out if args.out is not None else Path("runs") / spec.name
    console = _Console(args.quiet)
    try:
        result = train(spec, args.data, target=args.target, x_key=args.x_key, y_key=args.y_key,
                       epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
                       batch_size=args.batch_size, val_split=args.val_split,
                       test_split=args.test_split, seed=args.seed, dtype=args.dtype, out=out,
                       resume=args.resume, patience=args.patience, standardize=args.standardize,
                       checkpoint_every=args.checkpoint_every, max_bytes=args.max_bytes,
                       cache_dir=args.cache_dir, progress=console)
    except KeyboardInterrupt:
        console.close()
        checkpoint = out / "checkpoint.npz"
        if checkpoint.is_file():
            print(f"symgrad: the last checkpoint is {checkpoint}; continue with "
                  f"--resume {checkpoint}", file=sys.stderr)
        raise
    finally:
        console.close()
    _print_result(result)
    if result.status == "diverged":
        checkpoint = result.paths.get("checkpoint.npz")
        print(f"symgrad: error: {result.message}"
              + (f"; the last good checkpoint is {checkpoint}" if checkpoint else ""),
              file=sys.stderr)
        return 1
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="output folder (default: runs/demo)")
    parser.add_argument("--epochs", type=_arg(lambda s: _int_at_least(s, 1, "--epochs")),
                        metavar="N", help="number of epochs (default: the spec's 40)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="where generated modules are kept (default $SYMGRAD_CACHE_DIR or "
                             "~/.cache/symgrad)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress output on stderr")


def demo_command(args: argparse.Namespace) -> int:
    """``symgrad demo``: the whole pipeline on the bundled digits data."""
    console = _Console(args.quiet)
    start = time.perf_counter()
    try:
        result, tex = demo(args.out, epochs=args.epochs, progress=console,
                           cache_dir=args.cache_dir)
    finally:
        console.close()
    extra = {("derivation.tex" if p.suffix == ".tex" else p.name): p for p in tex}
    _print_result(result, extra)
    if not tex:
        print("  (derivation.tex not written: symbolic.latex is not available in this build)")
    accuracy = result.metrics.get("test_accuracy")
    if accuracy is not None:
        print(f"test accuracy {accuracy:.2%} on {result.data.sizes()['test']} held-out digits "
              f"({time.perf_counter() - start:.1f} s in all)")
    if result.status == "diverged":
        print(f"symgrad: error: {result.message}", file=sys.stderr)
        return 1
    return 0
