"""Eager PyTorch reference (CPU, float32): autograd + torch.optim.SGD/Adam.

Optional: :data:`AVAILABLE` is False (and the harness skips it) when torch is
not importable.  torch is a benchmark-only oracle, never a runtime dependency.
"""

from __future__ import annotations

import os

try:
    from .workloads import get_workload
except ImportError:  # pragma: no cover
    from workloads import get_workload

try:
    import torch
    import torch.nn.functional as F

    AVAILABLE = True
    UNAVAILABLE_REASON = ""
    torch.set_num_threads(os.cpu_count() or 1)
except Exception as exc:  # pragma: no cover - depends on the environment
    torch = None
    AVAILABLE = False
    UNAVAILABLE_REASON = f"torch not importable: {exc!r}"


def version() -> str | None:
    return torch.__version__ if AVAILABLE else None


def prepare(name, data):
    """Copy the (read-only) data into torch tensors once, outside the timing."""
    X = torch.from_numpy(data["X"].copy())
    Y = torch.from_numpy(data["Y"].copy())
    return {"X": X, "Y": Y}


def train(name, data, params):
    """Train ``params`` (numpy arrays, updated in place through shared memory);
    ``data`` is the output of :func:`prepare` (numpy input is accepted too)."""
    w = get_workload(name)
    X, Y = data["X"], data["Y"]
    if not isinstance(X, torch.Tensor):
        X, Y = torch.from_numpy(X.copy()), torch.from_numpy(Y.copy())
    p = {k: torch.from_numpy(v).requires_grad_(True) for k, v in params.items()}
    plist = list(p.values())
    if w.optimizer == "adam":
        opt = torch.optim.Adam(plist, lr=w.lr, betas=(w.adam_beta1, w.adam_beta2), eps=w.adam_eps)
    else:
        opt = torch.optim.SGD(plist, lr=w.lr)
    B, N, nb = w.batch, w.n_samples, w.n_batches
    loss = None
    for s in range(w.steps):
        a = (s % nb) * B
        e = min(a + B, N)
        Xb, Yb = X[a:e], Y[a:e]
        if w.n_hidden == 0:
            Z = F.linear(Xb, p["W"], p["b"])
        else:
            Z = F.linear(torch.relu(F.linear(Xb, p["W1"], p["b1"])), p["W2"], p["b2"])
        loss = F.mse_loss(Z, Yb) if w.loss == "mse" else F.cross_entropy(Z, Yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out = {k: t.detach().numpy() for k, t in p.items()}
    return out, float(loss.item())
