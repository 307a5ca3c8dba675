"""Generated fit() against the math: reference evaluator + plain NumPy optimizers, Kingma & Ba.

The epoch loop runs compiled; these tests compare its parameters after the first optimizer steps
with the reference evaluator (per-sample float64 SymPy semantics) driven by a NumPy transcription
of the documented update rules, on the same minibatches (``epoch_order``).
"""

from __future__ import annotations

import numpy as np
import pytest

from symbolic import Reference

HYPER = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "rho": 0.9,
         "weight_decay": 0.01}


def synthetic(module, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *module.INPUT_SHAPE))
    if module.CLASSES:
        Y = rng.integers(0, module.CLASSES, n)
    elif "softmax_cross_entropy" in module.RULES:
        Y = np.eye(module.TARGET_SHAPE[0])[rng.integers(0, module.TARGET_SHAPE[0], n)]
    else:
        Y = rng.normal(size=(n, *module.TARGET_SHAPE))
    return X, Y


def reference_fit(d, module, params, X, Y, optimizer, lr, epochs, batch_size=0, seed=0, **hyper):
    """The reference evaluator trained by the documented update rules, in plain NumPy."""
    h = {**HYPER, **hyper}
    ref = Reference(d)
    p = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    n, t, history = len(X), 0, []
    full = optimizer == "gd" or batch_size <= 0 or batch_size >= n
    bs = n if full else batch_size
    for epoch in range(epochs):
        order = np.arange(n) if full else module.epoch_order(n, seed, epoch)
        total = 0.0
        for start in range(0, n, bs):
            rows = order[start:start + bs]
            loss, grads = ref.loss_and_grad(p, X[rows], Y[rows])
            t += 1
            for k, g in grads.items():
                if optimizer in ("gd", "sgd"):
                    p[k] = p[k] - lr * g
                elif optimizer == "momentum":
                    m[k] = h["momentum"] * m[k] + g
                    p[k] = p[k] - lr * m[k]
                elif optimizer == "nesterov":
                    m[k] = h["momentum"] * m[k] + g
                    p[k] = p[k] - lr * (g + h["momentum"] * m[k])
                elif optimizer == "rmsprop":
                    v[k] = h["rho"] * v[k] + (1 - h["rho"]) * g * g
                    p[k] = p[k] - lr * g / (np.sqrt(v[k]) + h["eps"])
                else:
                    m[k] = h["beta1"] * m[k] + (1 - h["beta1"]) * g
                    v[k] = h["beta2"] * v[k] + (1 - h["beta2"]) * g * g
                    mhat = m[k] / (1 - h["beta1"] ** t)
                    vhat = v[k] / (1 - h["beta2"] ** t)
                    decay = h["weight_decay"] * p[k] if optimizer == "adamw" else 0.0
                    p[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + h["eps"]) + decay)
            total += loss * len(rows)
        history.append(total / n)
    return p, np.array(history), t


def assert_close(got, expected, rtol=1e-9):
    for key, value in expected.items():
        ours = np.asarray(getattr(got, key))
        scale = max(np.max(np.abs(value)), 1e-300)
        assert np.max(np.abs(ours - value)) <= rtol * scale, key


# (system, samples, batch size, epochs): at least ten optimizer steps each, with the spec's
# optimizer and learning rate; S4's batches of 24 over 64 rows leave a smaller last batch.
SEED_SYSTEMS = [
    ("s1_linear_regression", 64, 0, 10),
    ("s2_mnist_mlp", 64, 32, 5),
    ("s3_softmax_regression", 60, 12, 2),
    ("s4_mlp_sgd", 64, 24, 4),
    ("s5_tiny_mlp", 64, 0, 10),
]


@pytest.mark.parametrize("name,n,batch,epochs", SEED_SYSTEMS, ids=[s[0] for s in SEED_SYSTEMS])
def test_first_optimizer_steps_match_the_reference(name, n, batch, epochs, derivation,
                                                   generated_module):
    module, d = generated_module(name), derivation(name)
    X, Y = synthetic(module, n)
    params = module.init_params(1)
    if name == "s3_softmax_regression":  # zero init: perturb so every entry moves differently
        params = params._replace(W=np.random.default_rng(2).normal(0, 0.01, params.W.shape))
    train = module.TRAIN
    fitted, history, state = module.fit(params, X, Y, optimizer=train["optimizer"],
                                        lr=train["lr"], epochs=epochs, batch_size=batch, seed=7)
    expected, ref_history, steps = reference_fit(d, module, params._asdict(), X, Y,
                                                 train["optimizer"], train["lr"], epochs, batch,
                                                 seed=7)
    assert steps >= 10 and state["step"] == steps
    assert_close(fitted, expected)
    np.testing.assert_allclose(history, ref_history, rtol=1e-9)
    assert history[-1] < history[0]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"])
def test_every_optimizer_follows_its_equations(optimizer, derivation, generated_module):
    module, d = generated_module("s5_tiny_mlp"), derivation("s5_tiny_mlp")
    X, Y = synthetic(module, 40, seed=1)
    params = module.init_params(4)
    hyper = {"momentum": 0.8, "rho": 0.95, "weight_decay": 0.05, "beta1": 0.85}
    fitted, history, _ = module.fit(params, X, Y, optimizer=optimizer, lr=0.01, epochs=4,
                                    batch_size=16, seed=11, **hyper)
    expected, ref_history, _ = reference_fit(d, module, params._asdict(), X, Y, optimizer, 0.01,
                                             4, 16, seed=11, **hyper)
    assert_close(fitted, expected)
    np.testing.assert_allclose(history, ref_history, rtol=1e-9)


def test_adam_follows_kingma_and_ba_on_a_quadratic(generated_module):
    """S1's loss is quadratic: L(w, b) = mean((Xw + b − y)²)/2, gradient in closed form."""
    module = generated_module("s1_linear_regression")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 3)) * np.array([1.0, 3.0, 0.3])
    Y = X @ np.array([1.5, -2.0, 0.5]) + 0.7 + 0.1 * rng.normal(size=50)
    theta = np.array([0.2, 0.1, -0.3, 0.0])  # w, then b
    lr, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8

    def gradient(th):
        r = X @ th[:3] + th[3] - Y
        return np.concatenate([X.T @ r / len(X), [r.mean()]])

    # Algorithm 1 of Kingma & Ba (2015), literally
    m, v, path = np.zeros(4), np.zeros(4), []
    for t in range(1, 31):
        g = gradient(theta)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        path.append(theta.copy())

    params = {"w": np.array([0.2, 0.1, -0.3]), "b": np.array(0.0)}
    first, _, _ = module.fit(params, X, Y, optimizer="adam", lr=lr, epochs=1, beta1=beta1,
                             beta2=beta2, eps=eps)
    # the known first step: m̂/√v̂ = g/|g|, so every coordinate moves by lr against its gradient
    step = np.concatenate([first.w, [first.b]]) - np.array([0.2, 0.1, -0.3, 0.0])
    np.testing.assert_allclose(step, -lr * np.sign(gradient(np.array([0.2, 0.1, -0.3, 0.0]))),
                               rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([first.w, [first.b]]), path[0], rtol=1e-12)
    fitted, _, state = module.fit(params, X, Y, optimizer="adam", lr=lr, epochs=30, beta1=beta1,
                                  beta2=beta2, eps=eps)
    assert state["step"] == 30 and np.shape(fitted.b) == ()
    np.testing.assert_allclose(np.concatenate([fitted.w, [fitted.b]]), path[-1], rtol=1e-10)


@pytest.mark.reliability("F39")
def test_callbacks_resume_and_early_stop_are_exact(generated_module):
    module = generated_module("s5_tiny_mlp")
    X, Y = synthetic(module, 50, seed=3)
    params = module.init_params(0)
    original = [a.copy() for a in params]
    kwargs = dict(optimizer="adam", lr=0.01, batch_size=16, seed=3)
    full, history, state = module.fit(params, X, Y, epochs=6, **kwargs)
    for a, b in zip(params, original):
        np.testing.assert_array_equal(a, b)  # the input is not modified

    seen = []
    cb, cb_history, _ = module.fit(params, X, Y, epochs=6, **kwargs,
                                   callback=lambda e, loss, p, s: seen.append((e, loss, s["step"])))
    assert [e for e, _, _ in seen] == list(range(6)) and seen[-1][2] == state["step"]
    np.testing.assert_array_equal(cb_history, history)
    for a, b in zip(cb, full):
        np.testing.assert_array_equal(a, b)

    half, h1, s1 = module.fit(params, X, Y, epochs=3, **kwargs)
    rest, h2, s2 = module.fit(half, X, Y, epochs=3, state=s1, start_epoch=3, **kwargs)
    np.testing.assert_array_equal(np.concatenate([h1, h2]), history)
    for a, b in zip(rest, full):
        np.testing.assert_array_equal(a, b)
    assert s2["step"] == state["step"]

    stopped, short, _ = module.fit(params, X, Y, epochs=6, **kwargs,
                                   callback=lambda e, loss, p, s: e < 1)
    assert len(short) == 2
    with pytest.raises(ValueError, match="optimizer"):
        module.fit(params, X, Y, epochs=1, optimizer="sgd", state=s1)
    with pytest.raises(TypeError, match="hyperparameters"):
        module.fit(params, X, Y, epochs=1, betta1=0.5)


def test_epoch_order_is_a_seeded_permutation(generated_module):
    module = generated_module("s5_tiny_mlp")
    a = module.epoch_order(100, 1, 0)
    assert sorted(a) == list(range(100))
    np.testing.assert_array_equal(a, module.epoch_order(100, 1, 0))
    assert not np.array_equal(a, module.epoch_order(100, 1, 1))
    assert not np.array_equal(a, module.epoch_order(100, 2, 0))


def test_float32_training(generated_module):
    module = generated_module("s5_tiny_mlp")
    X, Y = synthetic(module, 64, seed=2)
    params = module.init_params(0, np.float32)
    fitted, history, state = module.fit(params, X, Y, optimizer="sgd", lr=0.05, epochs=20,
                                        batch_size=16)
    assert all(p.dtype == np.float32 for p in fitted)
    assert state["m"] is None and state["v"] is None  # plain SGD keeps no moments
    assert history[-1] < history[0]
    p64 = [p.astype(np.float64) for p in params]
    f64, h64, _ = module.fit(p64, X, Y, optimizer="sgd", lr=0.05, epochs=20, batch_size=16)
    np.testing.assert_allclose(history, h64, rtol=1e-4)


def test_unshuffled_minibatches_are_consecutive_rows(derivation, generated_module):
    module, d = generated_module("s5_tiny_mlp"), derivation("s5_tiny_mlp")
    X, Y = synthetic(module, 40, seed=4)
    params = module.init_params(2)
    fitted, history, _ = module.fit(params, X, Y, optimizer="sgd", lr=0.05, epochs=2,
                                    batch_size=16, shuffle=False)

    class InOrder:  # epoch_order stand-in: the identity permutation
        @staticmethod
        def epoch_order(n, seed, epoch):
            return np.arange(n)

    expected, ref_history, _ = reference_fit(d, InOrder, params._asdict(), X, Y, "sgd", 0.05, 2,
                                             16)
    assert_close(fitted, expected)
    np.testing.assert_allclose(history, ref_history, rtol=1e-9)


@pytest.mark.parametrize("optimizer, kept", [("momentum", "m"), ("rmsprop", "v"), ("adam", "mv")])
def test_state_holds_the_moments_the_optimizer_keeps(generated_module, optimizer, kept):
    module = generated_module("s5_tiny_mlp")
    X, Y = synthetic(module, 32, seed=4)
    params = module.init_params(0, np.float32)
    _, _, state = module.fit(params, X, Y, optimizer=optimizer, lr=0.01, epochs=2, batch_size=8)
    for key in "mv":
        if key in kept:
            assert state[key].W1.dtype == np.float32 and np.any(state[key].W1 != 0)
        else:
            assert state[key] is None


def test_fit_in_place_updates_the_given_arrays(generated_module):
    module = generated_module("s5_tiny_mlp")
    X, Y = synthetic(module, 40, seed=5)
    params = module.init_params(1, np.float32)
    copied, history, _ = module.fit(params, X, Y, optimizer="adam", lr=0.01, epochs=3,
                                    batch_size=16, seed=2)
    before = [p.copy() for p in params]
    mine = {name: np.array(p) for name, p in params._asdict().items()}
    fitted, history2, _ = module.fit(mine, X, Y, optimizer="adam", lr=0.01, epochs=3,
                                     batch_size=16, seed=2, inplace=True)
    np.testing.assert_array_equal(history, history2)
    for name, a, b in zip(module.PARAM_NAMES, copied, fitted):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(mine[name], a)  # the caller's arrays hold the result
        assert np.shares_memory(mine[name], b)
    for a, b in zip(params, before):
        np.testing.assert_array_equal(a, b)  # the default call left its input alone
    mixed = {**mine, "b2": mine["b2"].astype(np.float64)}
    with pytest.raises(ValueError, match="inplace=True needs"):
        module.fit(mixed, X, Y, inplace=True)
    strided = {**mine, "W1": np.asfortranarray(mine["W1"])}
    with pytest.raises(ValueError, match="W1"):
        module.fit(strided, X, Y, inplace=True)
