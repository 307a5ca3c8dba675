"""Plain NumPy reference implementation of every workload (float32 throughout)."""

from __future__ import annotations

import numpy as np

try:  # run as a script from benchmarks/ or imported as benchmarks.ref_numpy
    from .workloads import Workload, get_workload, step_rows
except ImportError:  # pragma: no cover
    from workloads import Workload, get_workload, step_rows

f32 = np.float32


def _forward_backward(w: Workload, p, X, Y):
    """Loss and mean gradients on one batch (all float32)."""
    n = X.shape[0]
    inv_n = f32(1.0 / n)
    g = {}
    if w.n_hidden == 0:
        Z = X @ p["W"].T + p["b"]
    else:
        Z1 = X @ p["W1"].T + p["b1"]
        A1 = np.maximum(Z1, f32(0))
        Z = A1 @ p["W2"].T + p["b2"]
    if w.loss == "mse":
        R = Z - Y
        loss = float(np.mean(R * R))
        dZ = R * f32(2.0 / (n * w.n_out))
    else:
        m = Z.max(axis=1, keepdims=True)
        E = np.exp(Z - m)
        s = E.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - Z[rows, Y]))
        dZ = E / s
        dZ[rows, Y] -= f32(1)
        dZ *= inv_n
    if w.n_hidden == 0:
        g["W"] = dZ.T @ X
        g["b"] = dZ.sum(axis=0)
    else:
        g["W2"] = dZ.T @ A1
        g["b2"] = dZ.sum(axis=0)
        dZ1 = dZ @ p["W2"]
        dZ1 *= Z1 > 0
        g["W1"] = dZ1.T @ X
        g["b1"] = dZ1.sum(axis=0)
    return loss, g


def train(name, data, params):
    """Train ``params`` (updated in place) and return ``(params, final_loss)``."""
    w = get_workload(name)
    X, Y = data["X"], data["Y"]
    p = params
    lr = f32(w.lr)
    if w.optimizer == "adam":
        b1, b2, eps = f32(w.adam_beta1), f32(w.adam_beta2), f32(w.adam_eps)
        m = {k: np.zeros_like(v) for k, v in p.items()}
        v2 = {k: np.zeros_like(v) for k, v in p.items()}
    loss = float("nan")
    for s in range(w.steps):
        a, b = step_rows(w, s)
        loss, g = _forward_backward(w, p, X[a:b], Y[a:b])
        if w.optimizer == "adam":
            t = s + 1
            c1 = f32(1.0 - w.adam_beta1**t)
            c2 = f32(1.0 - w.adam_beta2**t)
            for k in p:
                m[k] *= b1
                m[k] += (f32(1) - b1) * g[k]
                v2[k] *= b2
                v2[k] += (f32(1) - b2) * g[k] * g[k]
                p[k] -= lr * (m[k] / c1) / (np.sqrt(v2[k] / c2) + eps)
        else:
            for k in p:
                p[k] -= lr * g[k]
    return p, loss
