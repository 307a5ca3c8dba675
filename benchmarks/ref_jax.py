"""JAX reference (CPU, float32): the whole training run is one ``jax.jit`` call
(``lax.fori_loop`` over optimizer steps, gradients from ``jax.grad``, SGD/Adam
written out by hand).

Minibatches are taken with ``lax.dynamic_slice`` (static batch shape); when N is
not a multiple of the batch size, the last partial batch is a full-size slice
ending at row N with a row mask, so the loss and gradients are exactly the means
over the partial batch.

Optional: :data:`AVAILABLE` is False when jax is not importable.
"""

from __future__ import annotations

import functools

import numpy as np

try:
    from .workloads import Workload, get_workload
except ImportError:  # pragma: no cover
    from workloads import Workload, get_workload

try:
    import jax
    import jax.numpy as jnp
    from jax import lax

    AVAILABLE = True
    UNAVAILABLE_REASON = ""
except Exception as exc:  # pragma: no cover - depends on the environment
    jax = None
    AVAILABLE = False
    UNAVAILABLE_REASON = f"jax not importable: {exc!r}"


def version() -> str | None:
    return jax.__version__ if AVAILABLE else None


def prepare(name, data):
    """Put the data on the (CPU) device once, outside the timing."""
    return {"X": jax.device_put(data["X"]), "Y": jax.device_put(data["Y"])}


@functools.lru_cache(maxsize=None)
def _make_run(w: Workload):
    B, N, nb, steps = w.batch, w.n_samples, w.n_batches, w.steps
    ragged = N % B != 0
    f32 = jnp.float32

    def forward(p, Xb):
        if w.n_hidden == 0:
            return Xb @ p["W"].T + p["b"]
        A1 = jax.nn.relu(Xb @ p["W1"].T + p["b1"])
        return A1 @ p["W2"].T + p["b2"]

    def per_sample_loss(Z, Yb):
        if w.loss == "mse":
            return jnp.mean((Z - Yb) ** 2, axis=1)
        logp = jax.nn.log_softmax(Z, axis=1)
        return -jnp.take_along_axis(logp, Yb[:, None], axis=1)[:, 0]

    def batch_loss(p, Xb, Yb, weight):
        l = per_sample_loss(forward(p, Xb), Yb)
        return jnp.mean(l) if weight is None else jnp.sum(l * weight)

    grad_fn = jax.value_and_grad(batch_loss)

    def get_batch(X, Y, s):
        a = (s % nb) * B
        if not ragged:
            Xb = lax.dynamic_slice_in_dim(X, a, B, axis=0)
            Yb = lax.dynamic_slice_in_dim(Y, a, B, axis=0)
            return Xb, Yb, None
        cnt = jnp.minimum(B, N - a)
        start = jnp.minimum(a, N - B)
        off = a - start
        rows = jnp.arange(B)
        weight = jnp.where((rows >= off) & (rows < off + cnt), 1.0 / cnt, 0.0).astype(f32)
        Xb = lax.dynamic_slice_in_dim(X, start, B, axis=0)
        Yb = lax.dynamic_slice_in_dim(Y, start, B, axis=0)
        return Xb, Yb, weight

    lr = f32(w.lr)
    b1, b2, eps = f32(w.adam_beta1), f32(w.adam_beta2), f32(w.adam_eps)
    tmap = jax.tree_util.tree_map

    def body(s, carry):
        p, m, v, _, X, Y = carry
        Xb, Yb, weight = get_batch(X, Y, s)
        loss, g = grad_fn(p, Xb, Yb, weight)
        if w.optimizer == "adam":
            t = (s + 1).astype(f32)
            c1 = 1 - b1**t
            c2 = 1 - b2**t
            m = tmap(lambda mi, gi: b1 * mi + (1 - b1) * gi, m, g)
            v = tmap(lambda vi, gi: b2 * vi + (1 - b2) * gi * gi, v, g)
            p = tmap(lambda pi, mi, vi: pi - lr * (mi / c1) / (jnp.sqrt(vi / c2) + eps), p, m, v)
        else:
            p = tmap(lambda pi, gi: pi - lr * gi, p, g)
        return p, m, v, loss.astype(f32), X, Y

    @jax.jit
    def run(p, X, Y):
        zeros = tmap(jnp.zeros_like, p)
        init = (p, zeros, zeros, f32(jnp.nan), X, Y)
        p, _, _, loss, _, _ = lax.fori_loop(0, steps, body, init)
        return p, loss

    return run


def train(name, data, params):
    """Train and return ``(new numpy params, final_loss)``; ``data`` is the output
    of :func:`prepare` (numpy input is accepted too)."""
    w = get_workload(name)
    run = _make_run(w)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    p, loss = run(p, data["X"], data["Y"])
    jax.block_until_ready(p)
    return {k: np.asarray(v) for k, v in p.items()}, float(loss)
