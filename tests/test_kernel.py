"""The training kernel (codegen/kernel.py) against the reference evaluator, on both schedules.

Each spec is generated three times: with every matrix product as explicit loops (GEMM_MIN_SIZE
out of reach), with every eligible one as a BLAS call over the batch (GEMM_MIN_SIZE = 1), and on
the unrolled schedule (every loop over a value's entries written out, values and gradient sums
as locals, the batch feature-major). The loss and gradients of each must equal the reference
evaluator's (per-sample float64 SymPy semantics, an independent implementation), and float32
must agree to float32 accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

import codegen
from codegen import kernel
from symbolic import Reference, Spec, derive
from symbolic.check import random_point
from symbolic.verify import fan_in

SPECS = {
    # two layers, integer labels, L2: BLAS for W1 x, W2 a, δ products and both weight gradients
    "mlp_ce": dict(inputs={"x": 6}, targets={"y": {"classes": 4}},
                   params={"W1": {"shape": [5, 6]}, "b1": {"shape": [5]},
                           "W2": {"shape": [4, 5]}, "b2": {"shape": [4]}},
                   model={"a": "relu(W1 @ x + b1)", "z": "W2 @ a + b2"},
                   loss={"expr": "softmax_cross_entropy(z, y)", "l2": 0.01}),
    # a row vector times a matrix (xᵀ W), Wᵀ on the left, a one-hot target vector
    "rowvec_onehot": dict(inputs={"x": 3}, targets={"y": 4},
                          params={"W": {"shape": [3, 4]}, "V": {"shape": [4, 4]},
                                  "b": {"shape": [4]}},
                          model={"h": "tanh(x @ W + b)", "z": "V.T @ h"},
                          loss="softmax_cross_entropy(z, y)"),
    # per-sample scalars: a dot product, a sum over a vector, a compound product operand
    "scalars": dict(inputs={"x": 4}, targets={"y": 1},
                    params={"W": {"shape": [3, 4]}, "v": {"shape": [3]}, "c": {}},
                    model={"h": "W @ (x * sigmoid(x))", "yhat": "dot(v, tanh(h)) + c * sum(x * x)"},
                    loss="mse(yhat, y)"),
    # one-entry values (z, u of shape (1,)) read in several loops: locals, not buffers
    "one_entry": dict(inputs={"x": 3}, targets={"y": 1},
                      params={"W": {"shape": [1, 3]}, "c": {"shape": [1]}},
                      model={"z": "W @ x + c", "u": "tanh(z) + z * z"},
                      loss="mse(u, y)"),
}


def _module(name, tmp_path, monkeypatch, threshold, fused=False, unrolled=False):
    """The spec's module with every eligible product as BLAS (threshold 1) or as loops; fused:
    every batch outer-product gradient is _outer_acc under gd/sgd (the update in the same pass);
    unrolled: the unrolled schedule (else no spec gets it)."""
    monkeypatch.setattr(kernel, "GEMM_MIN_SIZE", threshold)
    monkeypatch.setattr(kernel, "TRANSPOSED_PRODUCT_MIN_WIDTH", 1)
    monkeypatch.setattr(kernel, "UNROLL_MAX_ENTRIES", 10**6 if unrolled else 0)
    monkeypatch.setattr(kernel, "UNROLL_MAX_STATEMENTS", 10**6)
    if fused:
        monkeypatch.setattr(kernel, "OUTER_KERNEL_MIN_ROWS", 1)
        monkeypatch.setattr(kernel, "OUTER_KERNEL_MIN_COLS", 1)
    label = "unrolled" if unrolled else ("fused" if fused else "blas") if threshold == 1 \
        else "loops"
    d = derive(Spec.build(name=f"kernel_{name}_{label}", **SPECS[name]))
    path = codegen.generate(d, tmp_path / label, verify=False)
    return d, codegen.load_module(path), path.read_text()


def _data(module, n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *module.INPUT_SHAPE))
    if module.CLASSES:
        return X, rng.integers(0, module.CLASSES, n)
    if "softmax_cross_entropy" in module.RULES:
        return X, np.eye(module.TARGET_SHAPE[0])[rng.integers(0, module.TARGET_SHAPE[0], n)]
    return X, rng.normal(size=(n, *module.TARGET_SHAPE))


SCHEDULES = {"blas": (1, False), "loops": (10**12, False), "unrolled": (1, True)}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_kernel_matches_the_reference(name, schedule, tmp_path, monkeypatch):
    threshold, unrolled = SCHEDULES[schedule]
    d, module, text = _module(name, tmp_path, monkeypatch, threshold, unrolled=unrolled)
    step = text[text.index("def _step("):text.index("\n# ---", text.index("def _step("))]
    if schedule == "blas" and name not in ("scalars", "one_entry"):
        assert "np.dot(" in step
        # the input batch times a parameter matrix: (W Xᵀ)ᵀ up to 64 rows (n = 7, 1), X Wᵀ above
        assert "_transpose_into(" in step and "np.dot(X, " in step
    if schedule != "blas":
        assert "np.dot(" not in step
    if unrolled:  # no loop but the sample loop, no buffer
        assert step.count("for ") == 1
        assert "return (\n    )" in text[text.index("def _buffers("):]
    ref = Reference(d)
    for seed, n in ((1, 7), (2, 1), (3, kernel.TRANSPOSED_PRODUCT_MAX_ROWS + 6)):
        X, Y = _data(module, n, seed)
        params = random_point({p.name: p.shape for p in d.spec.params}, seed=seed,
                              fan_in=fan_in(d))
        loss, grads = module.loss_and_grad(params, X, Y)
        ref_loss, ref_grads = ref.loss_and_grad(params, X, Y)
        assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
        for p in d.spec.params:
            np.testing.assert_allclose(getattr(grads, p.name), ref_grads[p.name],
                                       rtol=1e-10, atol=1e-12, err_msg=p.name)
        p32 = {k: np.asarray(v, np.float32) for k, v in params.items()}
        loss32, grads32 = module.loss_and_grad(p32, X, Y)
        assert loss32 == pytest.approx(ref_loss, rel=1e-4, abs=1e-5)
        for p in d.spec.params:
            g = getattr(grads32, p.name)
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, ref_grads[p.name], rtol=1e-3, atol=1e-4, err_msg=p.name)


@pytest.mark.parametrize("name", ["mlp_ce", "scalars", "rowvec_onehot"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in_order"])
@pytest.mark.parametrize("threshold, fused, unrolled",
                         [(1, False, False), (10**12, False, False), (1, True, False),
                          (1, False, True)], ids=["blas", "loops", "fused", "unrolled"])
def test_fit_with_a_ragged_last_minibatch_equals_steps_of_loss_and_grad(
        name, shuffle, threshold, fused, unrolled, tmp_path, monkeypatch):
    """fit reuses one set of buffers for every minibatch, the last one smaller: its parameters
    after one epoch equal plain SGD driven by loss_and_grad on the same rows (fused: W1 and W2,
    5×6 and 4×5 with L2, are updated inside _step by _outer_acc, remainder rows included;
    unrolled: minibatches laid out feature-major with labels (mlp_ce) or float targets
    (scalars), or read sample-major from a 3-feature input (rowvec_onehot))."""
    if fused and name != "mlp_ce" or name == "rowvec_onehot" and not unrolled:
        pytest.skip("the fused update is tested on mlp_ce; rowvec_onehot is the narrow input")
    d, module, text = _module(name, tmp_path, monkeypatch, threshold, fused, unrolled)
    assert ("_outer_acc(" in text) == fused
    wide = module.INPUT_SHAPE[0] >= kernel.FEATURE_MAJOR_MIN_WIDTH
    assert ("def _columns(" in text) == (unrolled and wide)
    X, Y = _data(module, 23, 3)
    params = module.init_params(4)
    fitted, history, _ = module.fit(params, X, Y, optimizer="sgd", lr=0.1, epochs=1,
                                    batch_size=5, seed=9, shuffle=shuffle)
    order = module.epoch_order(23, 9, 0) if shuffle else np.arange(23)
    p = {k: np.array(v) for k, v in params._asdict().items()}
    losses = []
    for start in range(0, 23, 5):
        rows = order[start:start + 5]
        loss, grads = module.loss_and_grad(p, X[rows], Y[rows])
        losses.append(loss * len(rows))
        p = {k: v - 0.1 * getattr(grads, k) for k, v in p.items()}
    for k, v in p.items():
        np.testing.assert_allclose(getattr(fitted, k), v, rtol=1e-12, atol=1e-14, err_msg=k)
    assert history[0] == pytest.approx(sum(losses) / 23, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_a_fused_module_trains_other_optimizers_through_update(optimizer, tmp_path, monkeypatch):
    """Only gd and sgd fuse the update into _step: other optimizers train exactly as the module
    without _outer_acc does."""
    _, plain, _ = _module("mlp_ce", tmp_path, monkeypatch, 1)
    _, fused, _ = _module("mlp_ce", tmp_path, monkeypatch, 1, fused=True)
    X, Y = _data(plain, 23, 5)
    runs = [m.fit(m.init_params(2), X, Y, optimizer=optimizer, lr=0.05, epochs=2, batch_size=5)
            for m in (plain, fused)]
    for name in plain.PARAM_NAMES:
        np.testing.assert_array_equal(getattr(runs[0][0], name), getattr(runs[1][0], name))
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_flat_access_indexes_rows_with_literal_strides():
    line = "_s += z[_i, _j0]*h[_i, 0]*z[_i, Y[_i]] + W[_j0, _r]*hz[_i, _r]"
    flat, found = kernel._flat_access(line, "z", (5,))
    assert found
    assert flat == "_s += _f_z[_i*5 + _j0]*h[_i, 0]*_f_z[_i*5 + Y[_i]] + W[_j0, _r]*hz[_i, _r]"
    assert kernel._flat_access("u[_i, _j0, _j1]", "u", (2, 3)) == ("_f_u[_i*6 + (_j0)*3 + _j1]",
                                                                   True)
    assert kernel._flat_access("v[_i, 0] + W[_j0, 1]", "v", (1,)) == ("_f_v[_i] + W[_j0, 1]", True)
    assert kernel._flat_access("W[_j0, _r]", "W", (3,)) == ("W[_j0, _r]", False)


def test_one_entry_values_are_locals(tmp_path, monkeypatch):
    _, _, text = _module("one_entry", tmp_path, monkeypatch, 10**12)
    buffers = text[text.index("def _buffers("):text.index("def _gradients(")]
    assert "# z" not in buffers and "# u" not in buffers
    step = text[text.index("def _step("):text.index("\n# ---", text.index("def _step("))]
    assert "_f_X[_i*3 + _r]" in step


@pytest.mark.parametrize("unrolled", [False, True], ids=["loops", "unrolled"])
@pytest.mark.parametrize("name", ["scalars", "rowvec_onehot"])
@pytest.mark.parametrize("callback", [None, lambda *_: None], ids=["one_call", "per_epoch"])
def test_full_batch_gd_equals_steps_of_loss_and_grad(name, unrolled, callback, tmp_path,
                                                     monkeypatch):
    """Full-batch gradient descent (unrolled: the batch laid out feature-major once by fit and
    reused, also when a callback makes fit run the epochs one call at a time) equals steps of
    loss_and_grad, epoch by epoch."""
    d, module, _ = _module(name, tmp_path, monkeypatch, 10**12, unrolled=unrolled)
    X, Y = _data(module, 11, 6)
    params = module.init_params(1)
    fitted, history, _ = module.fit(params, X, Y, optimizer="gd", lr=0.05, epochs=3,
                                    callback=callback)
    p = {k: np.array(v) for k, v in params._asdict().items()}
    for epoch in range(3):
        loss, grads = module.loss_and_grad(p, X, Y)
        assert history[epoch] == pytest.approx(loss, rel=1e-12)
        p = {k: v - 0.05 * getattr(grads, k) for k, v in p.items()}
    for k, v in p.items():
        np.testing.assert_allclose(getattr(fitted, k), v, rtol=1e-12, atol=1e-14, err_msg=k)


def test_the_statement_budget_decides_the_unrolled_schedule(monkeypatch):
    """A small model whose written-out sample loop stays within UNROLL_MAX_STATEMENTS is
    unrolled (no buffer); past the budget the same model gets loop nests and buffers."""
    from codegen.lower import lower

    d = derive(Spec.build(name="budget", **SPECS["mlp_ce"]))
    unrolled = lower(d, "budget")
    statements = kernel.loop_statements(unrolled.kernel)
    assert kernel.unrolled(d) and not unrolled.buffers and statements <= 200
    monkeypatch.setattr(kernel, "UNROLL_MAX_STATEMENTS", statements - 1)
    nests = lower(d, "budget")
    assert nests.buffers and not nests.feature_major
    assert kernel.loop_statements(nests.kernel) < statements
