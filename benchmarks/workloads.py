"""Benchmark workloads: sizes, optimizers, synthetic data and initial parameters.

Every implementation of a workload trains on exactly the arrays returned by
:func:`make_data` starting from exactly the arrays returned by
:func:`init_params`, and visits the minibatches in the order given by
:func:`batch_bounds`.

Conventions (shared by all reference implementations):

* weights ``W`` have shape ``(out, in)``; per sample ``z = W x + b``; for a batch
  ``X`` of shape ``(samples, features)`` that is ``Z = X @ W.T + b``;
* the batch loss is the mean of the per-sample losses, gradients are means over
  the batch; MSE per sample is the mean over outputs of ``(yhat - y)**2``;
* softmax cross-entropy takes integer labels (``int64``);
* parameter names: ``W``/``b`` for a single layer, ``W1``/``b1``/``W2``/``b2``
  for two layers (layer 1 = hidden ReLU layer, layer 2 = output layer);
* minibatches are contiguous row ranges of the data: batch ``j`` is rows
  ``[j*B, min((j+1)*B, N))`` and optimizer step ``s`` uses batch ``s % n_batches``
  (the data are i.i.d. draws, so they already are "a fixed permutation"; a last
  partial batch is used as is, averaged over its own size);
* ``final_loss`` reported by an implementation is the loss computed in the
  forward pass of the *last* optimizer step (i.e. on the last minibatch with the
  parameters before that step's update).  The harness independently evaluates
  the full-data loss of the returned parameters in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Workload",
    "WORKLOADS",
    "get_workload",
    "make_data",
    "init_params",
    "batch_bounds",
    "flops_per_sample",
    "eval_loss_f64",
    "fit_plan",
    "steps_as_one_pass",
]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    n_in: int  # d: input features
    n_hidden: int  # h: hidden ReLU units; 0 = single linear layer
    n_out: int  # k: outputs / classes
    n_samples: int  # N
    loss: str  # "mse" | "ce" (softmax cross-entropy, integer labels)
    optimizer: str  # "gd" (full batch) | "sgd" | "adam"
    lr: float
    batch_size: int | None  # None = full batch
    steps: int  # total optimizer steps
    seed: int
    zero_init: bool = False  # all parameters start at zero (W3)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    noise_std: float = 0.1  # regression target noise
    # relative tolerance of the harness's full-data-loss agreement check; W4 (Adam,
    # batch 32, 1875 steps) is not reproducible across float32 summation orders to
    # 1e-3 (ReLU on/off flips of near-zero pre-activations; see README "Agreement")
    loss_rtol: float = 1e-3

    # ---- derived -------------------------------------------------------
    @property
    def batch(self) -> int:
        """Effective batch size (N for full batch)."""
        return self.n_samples if self.batch_size is None else self.batch_size

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_samples / self.batch)

    @property
    def epochs(self) -> float:
        return self.steps / self.n_batches

    @property
    def samples_processed(self) -> int:
        """Number of per-sample forward+backward passes in the whole run."""
        b = batch_bounds(self)
        sizes = b[:, 1] - b[:, 0]
        reps, rem = divmod(self.steps, self.n_batches)
        return int(reps * sizes.sum() + sizes[:rem].sum())

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("W", "b") if self.n_hidden == 0 else ("W1", "b1", "W2", "b2")

    @property
    def classifier(self) -> bool:
        return self.loss == "ce"

    def quick(self) -> "Workload":
        """A smaller variant for smoke runs (same shapes, fewer steps/samples)."""
        if self.batch_size is None:
            return dataclasses.replace(self, steps=min(self.steps, 100))
        n = min(self.n_samples, 6400)
        nb = math.ceil(n / self.batch)
        return dataclasses.replace(self, n_samples=n, steps=min(self.steps, nb))


def _epoch_steps(n: int, b: int, epochs: int = 1) -> int:
    return math.ceil(n / b) * epochs


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("W1", "linear regression 3->1, MSE, full-batch GD",
                 n_in=3, n_hidden=0, n_out=1, n_samples=1000, loss="mse",
                 optimizer="gd", lr=0.1, batch_size=None, steps=1000, seed=1),
        Workload("W2", "MLP 10->5 ReLU->1, MSE, full-batch GD",
                 n_in=10, n_hidden=5, n_out=1, n_samples=100, loss="mse",
                 optimizer="gd", lr=0.01, batch_size=None, steps=1000, seed=2),
        Workload("W3", "softmax regression 784->10, CE, SGD b100 (1000 steps)",
                 n_in=784, n_hidden=0, n_out=10, n_samples=60000, loss="ce",
                 optimizer="sgd", lr=0.5, batch_size=100, steps=1000, seed=3,
                 zero_init=True),
        Workload("W4", "MLP 784->128 ReLU->10, CE, Adam b32 (1 epoch)",
                 n_in=784, n_hidden=128, n_out=10, n_samples=60000, loss="ce",
                 optimizer="adam", lr=1e-3, batch_size=32,
                 steps=_epoch_steps(60000, 32), seed=4, loss_rtol=5e-3),
        Workload("W5", "MLP 784->64 ReLU->10, CE, SGD b32 (1 epoch)",
                 n_in=784, n_hidden=64, n_out=10, n_samples=60000, loss="ce",
                 optimizer="sgd", lr=0.01, batch_size=32,
                 steps=_epoch_steps(60000, 32), seed=5),
        Workload("W6", "MLP 784->128 ReLU->10, CE, Adam b256 (1 epoch)",
                 n_in=784, n_hidden=128, n_out=10, n_samples=60000, loss="ce",
                 optimizer="adam", lr=1e-3, batch_size=256,
                 steps=_epoch_steps(60000, 256), seed=6),
    ]
}


def get_workload(name: str | Workload, quick: bool = False) -> Workload:
    w = name if isinstance(name, Workload) else WORKLOADS[name]
    return w.quick() if quick else w


# ---------------------------------------------------------------------------
# data


@functools.lru_cache(maxsize=4)
def _data_cached(w: Workload) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + w.seed)
    X = rng.standard_normal((w.n_samples, w.n_in), dtype=np.float32)
    if w.loss == "ce":
        # fixed random linear teacher: labels = argmax(X @ T)
        T = rng.standard_normal((w.n_in, w.n_out), dtype=np.float32)
        Y = np.argmax(X @ T, axis=1).astype(np.int64)
    elif w.n_hidden == 0:
        w_true = rng.standard_normal((w.n_in, w.n_out)).astype(np.float32)
        b_true = rng.standard_normal(w.n_out).astype(np.float32)
        noise = rng.standard_normal((w.n_samples, w.n_out), dtype=np.float32)
        Y = (X @ w_true + b_true + np.float32(w.noise_std) * noise).astype(np.float32)
    else:
        # small random teacher net d -> h ReLU -> k
        T1 = rng.standard_normal((w.n_hidden, w.n_in)).astype(np.float32)
        t1 = rng.standard_normal(w.n_hidden).astype(np.float32) * np.float32(0.5)
        T2 = rng.standard_normal((w.n_out, w.n_hidden)).astype(np.float32)
        T2 /= np.float32(math.sqrt(w.n_hidden))
        H = np.maximum(X @ T1.T + t1, 0)
        noise = rng.standard_normal((w.n_samples, w.n_out), dtype=np.float32)
        Y = (H @ T2.T + np.float32(w.noise_std) * noise).astype(np.float32)
    X.setflags(write=False)
    Y.setflags(write=False)
    return X, Y


def make_data(name: str | Workload, quick: bool = False) -> dict[str, np.ndarray]:
    """Synthetic data: ``{"X": float32 (N, d), "Y": ...}``.

    ``Y`` is float32 ``(N, k)`` for regression, int64 ``(N,)`` for classifiers.
    The arrays are read-only and cached: implementations must not modify them.
    """
    X, Y = _data_cached(get_workload(name, quick))
    return {"X": X, "Y": Y}


def init_params(name: str | Workload, quick: bool = False) -> dict[str, np.ndarray]:
    """Fresh (writable) float32 initial parameters, identical on every call.

    He-normal (std sqrt(2/fan_in)) for ReLU layers' W, Glorot-uniform for the
    output layer's W, zeros for biases; all zeros when ``zero_init``.
    """
    w = get_workload(name, quick)
    rng = np.random.default_rng(2000 + w.seed)
    k, d, h = w.n_out, w.n_in, w.n_hidden

    def glorot(fan_out: int, fan_in: int) -> np.ndarray:
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, size=(fan_out, fan_in)).astype(np.float32)

    def he(fan_out: int, fan_in: int) -> np.ndarray:
        return (rng.standard_normal((fan_out, fan_in)) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    if h == 0:
        if w.zero_init:
            return {"W": np.zeros((k, d), np.float32), "b": np.zeros(k, np.float32)}
        return {"W": glorot(k, d), "b": np.zeros(k, np.float32)}
    if w.zero_init:
        return {"W1": np.zeros((h, d), np.float32), "b1": np.zeros(h, np.float32),
                "W2": np.zeros((k, h), np.float32), "b2": np.zeros(k, np.float32)}
    W1 = he(h, d)
    W2 = glorot(k, h)
    return {"W1": W1, "b1": np.zeros(h, np.float32), "W2": W2, "b2": np.zeros(k, np.float32)}


def batch_bounds(name: str | Workload, quick: bool = False) -> np.ndarray:
    """``(n_batches, 2)`` int64 array of ``[start, stop)`` row ranges; optimizer
    step ``s`` uses row range ``batch_bounds[s % n_batches]``."""
    w = get_workload(name, quick)
    starts = np.arange(0, w.n_samples, w.batch, dtype=np.int64)
    stops = np.minimum(starts + w.batch, w.n_samples)
    return np.stack([starts, stops], axis=1)


def step_rows(w: Workload, s: int) -> tuple[int, int]:
    """Row range used by optimizer step ``s``."""
    j = s % w.n_batches
    return j * w.batch, min((j + 1) * w.batch, w.n_samples)


def fit_plan(w: Workload) -> tuple[bool, int]:
    """How an epoch-based ``fit(..., epochs=E, batch_size=B, shuffle=False)`` runs ``w``:
    ``(tile, epochs)``.  A whole number of epochs runs as is (``tile`` False); otherwise
    (W3: 1000 steps of 100 over 60,000 rows) the run is ONE epoch over the data laid out
    by :func:`steps_as_one_pass` (``tile`` True)."""
    whole, rem = divmod(w.steps, w.n_batches)
    return (False, whole) if rem == 0 else (True, 1)


def steps_as_one_pass(w: Workload, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``data`` as ``fit`` needs it for :func:`fit_plan`: unchanged when a whole number of
    epochs, else the rows of all ``w.steps`` minibatches in step order (``steps * batch``
    rows, a copy), so that one epoch of consecutive minibatches is the run."""
    tile, _ = fit_plan(w)
    if not tile:
        return data
    if w.n_samples % w.batch:
        raise NotImplementedError("tiling with ragged batches would merge batches")
    rows = np.concatenate([np.arange(*step_rows(w, s)) for s in range(w.steps)])
    return {"X": np.ascontiguousarray(data["X"][rows]), "Y": np.ascontiguousarray(data["Y"][rows])}


def flops_per_sample(w: Workload) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward+backward pass per sample.

    Two-layer net d->h->k: forward 2dh + 2hk, backward dW2 2hk, dA1 2hk,
    dW1 2dh (no gradient w.r.t. the input) = 4dh + 6hk.
    Single layer d->k: forward 2dk + backward dW 2dk = 4dk.
    Elementwise work (bias, ReLU, softmax, optimizer update) is not counted.
    """
    d, h, k = w.n_in, w.n_hidden, w.n_out
    if h == 0:
        return 4 * d * k
    return 4 * d * h + 6 * h * k


def eval_loss_f64(w: Workload, params: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> float:
    """Full-data loss of ``params`` evaluated in float64 (harness check)."""
    X = np.asarray(data["X"], dtype=np.float64)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    if w.n_hidden == 0:
        Z = X @ p["W"].T + p["b"]
    else:
        A = np.maximum(X @ p["W1"].T + p["b1"], 0.0)
        Z = A @ p["W2"].T + p["b2"]
    if w.loss == "mse":
        return float(np.mean((Z - np.asarray(data["Y"], np.float64)) ** 2))
    y = np.asarray(data["Y"])
    m = Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(Z - m).sum(axis=1)) + m[:, 0]
    return float(np.mean(lse - Z[np.arange(len(y)), y]))
