"""symgrad: models written as math → chain-rule gradients, a LaTeX derivation, a verified Numba module.

The notebook API mirrors the command line::

    import symgrad
    result = symgrad.train("examples/logistic_regression.toml", "breast_cancer",
                           standardize=True, out="runs/logreg", progress=print)
    result.metrics["test_accuracy"], result.history, result.paths

Names are imported lazily, so ``import symgrad`` (and the ``symgrad`` command) starts fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "train": ("symgrad.runs", "train"),
    "demo": ("symgrad.runs", "demo"),
    "TrainResult": ("symgrad.runs", "TrainResult"),
    "TrainOptions": ("symgrad.runs", "TrainOptions"),
    "Progress": ("symgrad.runs", "Progress"),
    "load_data": ("symgrad.data", "load_data"),
    "Dataset": ("symgrad.data", "Dataset"),
    "DataError": ("symgrad.data", "DataError"),
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'symgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
