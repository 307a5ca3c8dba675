"""Hand-written Numba reference: the whole training run is one ``@njit(cache=True)``
call; matrix products go through ``np.dot`` (BLAS sgemm via SciPy), every buffer is
allocated once before the step loop, float32 end to end.

This is the baseline the harness reports ratios against ("numba-dot").

``error_model="numpy"`` matters: with Numba's default ("python") every float
division checks for a zero divisor and raises ZeroDivisionError, which keeps LLVM
from vectorising the Adam update loop (``m / c1 / (sqrt(v / c2) + eps)``); W4 ran
~3x slower with the default (1.6-1.9 s vs 0.5-0.8 s, bitwise-identical results).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload

try:
    from .workloads import get_workload
except ImportError:  # pragma: no cover
    from workloads import get_workload

OPT_SGD = 0  # plain (minibatch or full-batch) gradient descent
OPT_ADAM = 1

# ---------------------------------------------------------------------------
# building blocks (inlined by LLVM into the training loops)


@njit(cache=True, inline="always", error_model="numpy")
def _dense_fwd(X, W, b, Z):
    """Z = X @ W.T + b   (X (n,d), W (k,d), Z (n,k) preallocated)."""
    np.dot(X, W.T, Z)
    n, k = Z.shape
    for i in range(n):
        for j in range(k):
            Z[i, j] += b[j]


@njit(cache=True, inline="always", error_model="numpy")
def _dense_bwd_params(dZ, X, dW, db):
    """dW = dZ.T @ X, db = column sums of dZ."""
    np.dot(dZ.T, X, dW)
    n, k = dZ.shape
    for j in range(k):
        db[j] = 0.0
    for i in range(n):
        for j in range(k):
            db[j] += dZ[i, j]


@njit(cache=True, inline="always", error_model="numpy")
def _mse_loss_grad(Z, Y, dZ):
    """MSE loss (mean over samples and outputs); dZ = dloss/dZ."""
    n, k = Z.shape
    scale = np.float32(2.0) / np.float32(n * k)
    acc = 0.0  # float64 accumulator for the reported loss only
    for i in range(n):
        for j in range(k):
            r = Z[i, j] - Y[i, j]
            acc += r * r
            dZ[i, j] = r * scale
    return acc / (n * k)


@njit(cache=True, inline="always", error_model="numpy")
def _ce_loss_grad(Z, y, dZ):
    """Softmax cross-entropy with integer labels; dZ = (softmax - onehot) / n."""
    n, k = Z.shape
    inv_n = np.float32(1.0) / np.float32(n)
    acc = 0.0
    for i in range(n):
        m = Z[i, 0]
        for j in range(1, k):
            if Z[i, j] > m:
                m = Z[i, j]
        s = np.float32(0.0)
        for j in range(k):
            e = np.exp(Z[i, j] - m)
            dZ[i, j] = e
            s += e
        acc += np.log(s) + m - Z[i, y[i]]
        inv_s = inv_n / s
        for j in range(k):
            dZ[i, j] *= inv_s
        dZ[i, y[i]] -= inv_n
    return acc / n


def _loss_grad(Z, Y, dZ):  # pragma: no cover - stub, resolved by the overload below
    """Loss and dloss/dZ; MSE for float (n,k) targets, softmax CE for int labels."""
    raise NotImplementedError


@overload(_loss_grad, inline="always")
def _ov_loss_grad(Z, Y, dZ):
    # chosen at compile time from the type of Y (keeps the njit cache valid;
    # passing the loss function as an argument would defeat caching)
    if Y.ndim == 2:
        return lambda Z, Y, dZ: _mse_loss_grad(Z, Y, dZ)
    return lambda Z, Y, dZ: _ce_loss_grad(Z, Y, dZ)


@njit(cache=True, inline="always", error_model="numpy")
def _update(p, g, m, v, opt, lr, b1, b2, eps, c1, c2):
    """In-place SGD or Adam update of a flat parameter vector."""
    if opt == OPT_ADAM:
        one = np.float32(1.0)
        for i in range(p.size):
            gi = g[i]
            m[i] = b1 * m[i] + (one - b1) * gi
            v[i] = b2 * v[i] + (one - b2) * gi * gi
            p[i] -= lr * (m[i] / c1) / (np.sqrt(v[i] / c2) + eps)
    else:
        for i in range(p.size):
            p[i] -= lr * g[i]


@njit(cache=True, inline="always", error_model="numpy")
def _flat(a):
    return a.reshape(a.size)


@njit(cache=True, inline="always", error_model="numpy")
def _bias_corrections(opt, t, beta1, beta2):
    if opt == OPT_ADAM:
        return np.float32(1.0 - beta1**t), np.float32(1.0 - beta2**t)
    return np.float32(1.0), np.float32(1.0)


# ---------------------------------------------------------------------------
# training loops: one per (architecture, loss) pair


@njit(cache=True, error_model="numpy")
def _train_linear(X, Y, W, b, opt, lr, beta1, beta2, eps, batch, steps):
    N = X.shape[0]
    k = W.shape[0]
    nbat = (N + batch - 1) // batch
    f = np.float32
    lr_, b1_, b2_, eps_ = f(lr), f(beta1), f(beta2), f(eps)
    Z = np.empty((batch, k), np.float32)
    dZ = np.empty((batch, k), np.float32)
    dW = np.empty_like(W)
    db = np.empty_like(b)
    mW = np.zeros_like(W)
    vW = np.zeros_like(W)
    mb = np.zeros_like(b)
    vb = np.zeros_like(b)
    loss = np.nan
    for s in range(steps):
        j = s % nbat
        a = j * batch
        e = min(a + batch, N)
        n = e - a
        Xb = X[a:e]
        Zb = Z[:n]
        dZb = dZ[:n]
        _dense_fwd(Xb, W, b, Zb)
        loss = _loss_grad(Zb, Y[a:e], dZb)
        _dense_bwd_params(dZb, Xb, dW, db)
        c1, c2 = _bias_corrections(opt, s + 1, beta1, beta2)
        _update(_flat(W), _flat(dW), _flat(mW), _flat(vW), opt, lr_, b1_, b2_, eps_, c1, c2)
        _update(b, db, mb, vb, opt, lr_, b1_, b2_, eps_, c1, c2)
    return loss


@njit(cache=True, error_model="numpy")
def _train_mlp(X, Y, W1, b1, W2, b2, opt, lr, beta1, beta2, eps, batch, steps):
    N = X.shape[0]
    h = W1.shape[0]
    k = W2.shape[0]
    nbat = (N + batch - 1) // batch
    f = np.float32
    lr_, b1_, b2_, eps_ = f(lr), f(beta1), f(beta2), f(eps)
    Z1 = np.empty((batch, h), np.float32)
    A1 = np.empty((batch, h), np.float32)
    dZ1 = np.empty((batch, h), np.float32)
    Z2 = np.empty((batch, k), np.float32)
    dZ2 = np.empty((batch, k), np.float32)
    dW1 = np.empty_like(W1)
    db1 = np.empty_like(b1)
    dW2 = np.empty_like(W2)
    db2 = np.empty_like(b2)
    mW1, vW1 = np.zeros_like(W1), np.zeros_like(W1)
    mb1, vb1 = np.zeros_like(b1), np.zeros_like(b1)
    mW2, vW2 = np.zeros_like(W2), np.zeros_like(W2)
    mb2, vb2 = np.zeros_like(b2), np.zeros_like(b2)
    zero = np.float32(0.0)
    loss = np.nan
    for s in range(steps):
        j = s % nbat
        a = j * batch
        e = min(a + batch, N)
        n = e - a
        Xb = X[a:e]
        Z1b, A1b, dZ1b = Z1[:n], A1[:n], dZ1[:n]
        Z2b, dZ2b = Z2[:n], dZ2[:n]
        # forward
        _dense_fwd(Xb, W1, b1, Z1b)
        for i in range(n):
            for u in range(h):
                A1b[i, u] = Z1b[i, u] if Z1b[i, u] > zero else zero
        _dense_fwd(A1b, W2, b2, Z2b)
        loss = _loss_grad(Z2b, Y[a:e], dZ2b)
        # backward
        _dense_bwd_params(dZ2b, A1b, dW2, db2)
        np.dot(dZ2b, W2, dZ1b)
        for i in range(n):
            for u in range(h):
                if Z1b[i, u] <= zero:
                    dZ1b[i, u] = zero
        _dense_bwd_params(dZ1b, Xb, dW1, db1)
        # update
        c1, c2 = _bias_corrections(opt, s + 1, beta1, beta2)
        _update(_flat(W1), _flat(dW1), _flat(mW1), _flat(vW1), opt, lr_, b1_, b2_, eps_, c1, c2)
        _update(b1, db1, mb1, vb1, opt, lr_, b1_, b2_, eps_, c1, c2)
        _update(_flat(W2), _flat(dW2), _flat(mW2), _flat(vW2), opt, lr_, b1_, b2_, eps_, c1, c2)
        _update(b2, db2, mb2, vb2, opt, lr_, b1_, b2_, eps_, c1, c2)
    return loss


def train(name, data, params):
    """Train ``params`` (updated in place) and return ``(params, final_loss)``."""
    w = get_workload(name)
    X, Y = data["X"], data["Y"]
    opt = OPT_ADAM if w.optimizer == "adam" else OPT_SGD
    hyper = (opt, w.lr, w.adam_beta1, w.adam_beta2, w.adam_eps, w.batch, w.steps)
    if w.n_hidden == 0:
        loss = _train_linear(X, Y, params["W"], params["b"], *hyper)
    else:
        loss = _train_mlp(X, Y, params["W1"], params["b1"], params["W2"], params["b2"],
                          *hyper)
    return params, float(loss)


@njit(cache=True, error_model="numpy")
def gemm_loop(A, B, C, iters):
    """``iters`` times C = A @ B through Numba's np.dot (for the GEMM-peak line)."""
    for _ in range(iters):
        np.dot(A, B, C)
    return C[0, 0]
