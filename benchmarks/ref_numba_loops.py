"""Hand-written Numba reference with explicit loops (no BLAS) for the small
regression workloads W1 and W2.

The whole run is one ``@njit(cache=True)`` call; forward and backward passes are
fused into one sweep over the samples per step, gradients accumulated in
float32 buffers allocated once.  Full-batch or minibatch plain gradient descent
only (W1/W2 are full-batch GD).
"""

from __future__ import annotations

import numpy as np
from numba import njit

try:
    from .workloads import get_workload
except ImportError:  # pragma: no cover
    from workloads import get_workload

SUPPORTED = ("W1", "W2")


@njit(cache=True, error_model="numpy")
def _train_linear_mse(X, Y, W, b, lr, batch, steps):
    N, d = X.shape
    k = W.shape[0]
    nbat = (N + batch - 1) // batch
    lr_ = np.float32(lr)
    dW = np.zeros_like(W)
    db = np.zeros_like(b)
    z = np.empty(k, np.float32)
    loss = np.nan
    for s in range(steps):
        a = (s % nbat) * batch
        e = min(a + batch, N)
        n = e - a
        scale = np.float32(2.0) / np.float32(n * k)
        dW[:, :] = 0
        db[:] = 0
        acc = np.float32(0.0)
        for i in range(a, e):
            for o in range(k):
                t = b[o]
                for j in range(d):
                    t += W[o, j] * X[i, j]
                z[o] = t
            for o in range(k):
                r = z[o] - Y[i, o]
                acc += r * r
                g = r * scale
                db[o] += g
                for j in range(d):
                    dW[o, j] += g * X[i, j]
        loss = acc / np.float32(n * k)
        for o in range(k):
            b[o] -= lr_ * db[o]
            for j in range(d):
                W[o, j] -= lr_ * dW[o, j]
    return loss


@njit(cache=True, error_model="numpy")
def _train_mlp_mse(X, Y, W1, b1, W2, b2, lr, batch, steps):
    N, d = X.shape
    h = W1.shape[0]
    k = W2.shape[0]
    nbat = (N + batch - 1) // batch
    lr_ = np.float32(lr)
    zero = np.float32(0.0)
    dW1 = np.zeros_like(W1)
    db1 = np.zeros_like(b1)
    dW2 = np.zeros_like(W2)
    db2 = np.zeros_like(b2)
    z1 = np.empty(h, np.float32)
    a1 = np.empty(h, np.float32)
    g2 = np.empty(k, np.float32)
    loss = np.nan
    for s in range(steps):
        a = (s % nbat) * batch
        e = min(a + batch, N)
        n = e - a
        scale = np.float32(2.0) / np.float32(n * k)
        dW1[:, :] = 0
        db1[:] = 0
        dW2[:, :] = 0
        db2[:] = 0
        acc = np.float32(0.0)
        for i in range(a, e):
            # forward
            for u in range(h):
                t = b1[u]
                for j in range(d):
                    t += W1[u, j] * X[i, j]
                z1[u] = t
                a1[u] = t if t > zero else zero
            for o in range(k):
                t = b2[o]
                for u in range(h):
                    t += W2[o, u] * a1[u]
                r = t - Y[i, o]
                acc += r * r
                g2[o] = r * scale
            # backward
            for o in range(k):
                db2[o] += g2[o]
                for u in range(h):
                    dW2[o, u] += g2[o] * a1[u]
            for u in range(h):
                if z1[u] > zero:
                    g = zero
                    for o in range(k):
                        g += W2[o, u] * g2[o]
                    db1[u] += g
                    for j in range(d):
                        dW1[u, j] += g * X[i, j]
        loss = acc / np.float32(n * k)
        for u in range(h):
            b1[u] -= lr_ * db1[u]
            for j in range(d):
                W1[u, j] -= lr_ * dW1[u, j]
        for o in range(k):
            b2[o] -= lr_ * db2[o]
            for u in range(h):
                W2[o, u] -= lr_ * dW2[o, u]
    return loss


def supports(name) -> bool:
    w = get_workload(name)
    return w.loss == "mse" and w.optimizer == "gd" and w.name in SUPPORTED


def train(name, data, params):
    """Train ``params`` (updated in place) and return ``(params, final_loss)``."""
    w = get_workload(name)
    if not supports(w):
        raise NotImplementedError(f"numba-loops implements {SUPPORTED} only, not {w.name}")
    X, Y = data["X"], data["Y"]
    if w.n_hidden == 0:
        loss = _train_linear_mse(X, Y, params["W"], params["b"], w.lr, w.batch, w.steps)
    else:
        loss = _train_mlp_mse(X, Y, params["W1"], params["b1"], params["W2"], params["b2"],
                              w.lr, w.batch, w.steps)
    return params, float(loss)
