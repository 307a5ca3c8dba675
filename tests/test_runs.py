"""Training runs as a library (symgrad.runs): data prep, metrics, checkpoints, early stopping,
divergence, outputs. Uses a NumPy stand-in for the generated module (same API, built on the
reference evaluator) and small scripted fakes, so these tests need no Numba compilation.
RELIABILITY_CASES D.26, D.27, E.33, E.34, F.35, F.36, F.39.
"""

from __future__ import annotations

import json
import math
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from symbolic import DomainError, Reference, Spec, derive
from symbolic.verify import init_point
from symgrad import runs
from symgrad.data import DataError
from symgrad.fileio import CheckpointError, OutputError, load_checkpoint, load_npz_safe

# ---------------------------------------------------------------------------- stand-ins


class StandIn:
    """The generated module's API in plain NumPy (slow, per sample): for tests only."""

    def __init__(self, d):
        self.d = d
        self.ref = Reference(d)
        self.Params = namedtuple("Params", [p.name for p in d.spec.params])
        self.__file__ = ""

    def init_params(self, seed=0, dtype=np.float64):
        point = init_point(self.d, seed)
        return self.Params(**{k: v.astype(dtype) for k, v in point.items()})

    def _p(self, params):
        return {k: np.asarray(v, dtype=np.float64) for k, v in params._asdict().items()}

    def forward(self, params, X):
        return self.ref.forward(self._p(params), X)

    def predict(self, params, X):
        out = self.forward(params, X)
        if self.d.task == "multiclass":
            return np.argmax(out, axis=1)
        return out

    def accuracy(self, params, X, Y):
        out = self.forward(params, X)
        if self.d.task == "multiclass":
            labels = Y if Y.ndim == 1 else np.argmax(Y, axis=1)
            return float(np.mean(np.argmax(out, axis=1) == labels))
        logits = f"sigmoid({self.d.prediction})" in self.d.spec.loss
        return float(np.mean((out > (0.0 if logits else 0.5)) == (Y > 0.5)))

    def loss(self, params, X, Y):
        try:
            return self.ref.loss(self._p(params), X, Y)
        except DomainError:
            return math.nan

    def loss_and_grad(self, params, X, Y):
        with np.errstate(all="ignore"):
            try:
                loss, grads = self.ref.loss_and_grad(self._p(params), X, Y)
            except DomainError:
                return math.nan, self.Params(*[np.full_like(v, np.nan) for v in params])
        return loss, self.Params(**grads)

    def fit(self, params, X, Y, optimizer="gd", lr=0.01, epochs=1, batch_size=0, seed=0,
            callback=None, state=None, start_epoch=0, **hyper):
        if state is None:
            state = {"optimizer": optimizer, "step": 0,
                     "m": [np.zeros_like(v) for v in params],
                     "v": [np.zeros_like(v) for v in params]}
        b1, b2, eps = hyper.get("beta1", 0.9), hyper.get("beta2", 0.999), hyper.get("eps", 1e-8)
        history = []
        n = len(X)
        bs = n if batch_size <= 0 else min(batch_size, n)
        for epoch in range(start_epoch, start_epoch + epochs):
            order = np.random.default_rng([seed, epoch]).permutation(n)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                loss, grads = self.loss_and_grad(params, X[idx], Y[idx])
                total += loss * len(idx)
                state["step"] += 1
                new = []
                for i, (p, g) in enumerate(zip(params, grads)):
                    if optimizer == "adam":
                        state["m"][i] = b1 * state["m"][i] + (1 - b1) * g
                        state["v"][i] = b2 * state["v"][i] + (1 - b2) * g * g
                        mh = state["m"][i] / (1 - b1 ** state["step"])
                        vh = state["v"][i] / (1 - b2 ** state["step"])
                        step = lr * mh / (np.sqrt(vh) + eps)
                        new.append((p - step).astype(p.dtype).reshape(p.shape))
                    else:
                        new.append((p - lr * g).astype(p.dtype).reshape(p.shape))
                params = self.Params(*new)
            history.append(total / n)
            if callback is not None and callback(epoch, total / n, params, state) is False:
                break
        return params, history, state


class Scripted:
    """A fake module whose parameter w after epoch e is ``ws[e]`` and whose loss is w itself."""

    Params = namedtuple("Params", ["w"])

    def __init__(self, ws):
        self.ws = ws
        self.__file__ = ""

    def init_params(self, seed=0, dtype=np.float64):
        return self.Params(w=np.array([1.0, 1.0], dtype=dtype))

    def loss(self, params, X, Y):
        return float(params.w[0])

    def predict(self, params, X):
        return np.full(len(X), params.w[0])

    def accuracy(self, params, X, Y):
        return 0.5

    def fit(self, params, X, Y, optimizer="gd", lr=0.01, epochs=1, batch_size=0, seed=0,
            callback=None, state=None, start_epoch=0, **hyper):
        state = state or {"step": 0}
        for epoch in range(start_epoch, start_epoch + epochs):
            state["step"] += 1
            params = self.Params(w=np.array([self.ws[epoch], 1.0]))
            if callback(epoch, self.ws[epoch], params, state) is False:
                break
        return params, [], state


# ---------------------------------------------------------------------------- specs


def linreg(n_features=3, **train):
    return Spec.build(name="linreg", inputs={"x": n_features}, targets={"y": 1},
                      params={"w": {"shape": [n_features]}, "b": {}},
                      model={"yhat": "w @ x + b"}, loss="square(yhat - y) / 2",
                      train={"optimizer": "gd", "lr": 0.1, "epochs": 5, **train})


def softmax_iris(**train):
    return Spec.build(name="iris_softmax", inputs={"x": 4}, targets={"y": {"classes": 3}},
                      params={"W": {"shape": [3, 4], "init": "zeros"}, "b": {"shape": [3]}},
                      model={"z": "W @ x + b"}, loss="softmax_cross_entropy(z, y)",
                      train={"optimizer": "adam", "lr": 0.05, "epochs": 4, "batch_size": 16,
                             **train})


@pytest.fixture(scope="module")
def iris_d():
    return derive(softmax_iris())


@pytest.fixture(scope="module")
def iris_module(iris_d):
    return StandIn(iris_d)


def regression_data(n=60, seed=0, features=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = X @ np.arange(1.0, features + 1) + 0.5 + 0.01 * rng.normal(size=n)
    return X, y


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------- options


def test_options_override_the_spec_train_table():
    spec = softmax_iris()
    default = runs.resolve_options(spec)
    assert (default.optimizer, default.lr, default.epochs, default.batch_size) == \
        ("adam", 0.05, 4, 16)
    changed = runs.resolve_options(spec, optimizer="sgd", lr=0.5, epochs=2, batch_size=0,
                                   seed=3)
    assert (changed.optimizer, changed.lr, changed.epochs, changed.batch_size, changed.seed) == \
        ("sgd", 0.5, 2, 0, 3)


@pytest.mark.parametrize("kw, match", [
    ({"lr": -1}, "lr"), ({"lr": float("nan")}, "lr"), ({"epochs": 0}, "epochs"),
    ({"optimizer": "adamm"}, "optimizer"), ({"val_split": 1.0}, "val_split"),
    ({"dtype": "float16"}, "dtype"), ({"patience": 0}, "patience"),
])
def test_invalid_options_name_the_option(kw, match):
    with pytest.raises(ValueError, match=match):
        runs.resolve_options(softmax_iris(), **kw)


# ---------------------------------------------------------------------------- data


def test_bundled_data_split_25_percent_test_then_validation(iris_d):
    opts = runs.resolve_options(iris_d.spec)
    data = runs.prepare_data(iris_d, "iris", opts)
    sizes = data.sizes()
    assert sizes["test"] == round(150 * 0.25)
    assert sizes["train"] + sizes["val"] == 150 - sizes["test"]
    assert data.test_from == "split"
    assert data.y_train.dtype == np.int64
    # deterministic in the seed
    again = runs.prepare_data(iris_d, "iris", opts)
    assert np.array_equal(again.X_test, data.X_test)


def test_standardize_uses_training_statistics_only(iris_d):
    opts = runs.resolve_options(iris_d.spec, standardize=True)
    data = runs.prepare_data(iris_d, "iris", opts)
    assert np.allclose(data.X_train.mean(axis=0), 0, atol=1e-12)
    assert np.allclose(data.X_train.std(axis=0), 1)
    assert not np.allclose(data.X_test.mean(axis=0), 0, atol=1e-3)


def test_data_with_its_own_test_set_keeps_it(iris_d):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.arange(40) % 3
    Xt, yt = rng.normal(size=(10, 4)), np.arange(10) % 3
    data = runs.prepare_data(iris_d, (X, y, Xt, yt), runs.resolve_options(iris_d.spec))
    assert data.test_from == "data" and data.sizes()["test"] == 10


def test_labels_become_one_hot_for_a_vector_softmax_target():
    spec = Spec.build(name="onehot", inputs={"x": 4}, targets={"y": 3},
                      params={"W": {"shape": [3, 4]}, "b": {"shape": [3]}},
                      model={"z": "W @ x + b"}, loss="softmax_cross_entropy(z, y)")
    d = derive(spec)
    opts = runs.resolve_options(spec, val_split=0, test_split=0)
    data = runs.prepare_data(d, "iris", opts)
    assert data.y_train.shape == (150, 3)
    assert np.array_equal(data.y_train.sum(axis=1), np.ones(150))
    with pytest.raises(DataError, match="sample 0 .*one-hot"):
        runs.prepare_data(d, (np.zeros((4, 4)), np.full((4, 3), 0.5)), opts)


@pytest.mark.parametrize("labels, match", [
    ([0, 1, 3, 1], "sample 2 has label 3, which is out of range.*0..2"),
    ([0, -1, 2, 1], "sample 1 has label -1"),
    ([0, 1, 2.5, 1], "sample 2 has label 2.5, which is not an integer"),
])
@pytest.mark.reliability("E33")
def test_bad_classifier_labels_name_the_sample(iris_d, labels, match):
    X = np.zeros((4, 4))
    with pytest.raises(DataError, match=match):
        runs.prepare_data(iris_d, (X, np.array(labels)), runs.resolve_options(iris_d.spec,
                                                                                test_split=0,
                                                                                val_split=0))


@pytest.mark.reliability("E33")
def test_binary_labels_must_be_zero_or_one():
    spec = Spec.build(name="logreg", inputs={"x": 2}, targets={"y": 1},
                      params={"w": {"shape": [2]}, "b": {}}, model={"z": "w @ x + b"},
                      loss="binary_cross_entropy(sigmoid(z), y)")
    d = derive(spec)
    opts = runs.resolve_options(spec, test_split=0, val_split=0)
    with pytest.raises(DataError, match="sample 1 has label 2, which is out of range.*0 or 1"):
        runs.prepare_data(d, (np.zeros((3, 2)), np.array([0, 2, 1])), opts)


@pytest.mark.reliability("E34")
def test_feature_count_mismatch_names_both_sides(iris_d):
    with pytest.raises(DataError, match="64 features.*expects 4"):
        runs.prepare_data(iris_d, "digits", runs.resolve_options(iris_d.spec))


@pytest.mark.reliability("E32")
def test_nan_in_array_data_is_refused(iris_d):
    X = np.zeros((5, 4))
    X[3, 2] = np.nan
    with pytest.raises(DataError, match=r"non-finite value at index \(3, 2\)"):
        runs.prepare_data(iris_d, (X, np.zeros(5, dtype=int)), runs.resolve_options(iris_d.spec))


def test_too_few_samples_to_split(iris_d):
    with pytest.raises(DataError, match="too few"):
        runs.prepare_data(iris_d, (np.zeros((1, 4)), np.zeros(1, dtype=int)),
                          runs.resolve_options(iris_d.spec))


# ---------------------------------------------------------------------------- a whole run


def test_run_writes_every_output_atomically(tmp_path, iris_d, iris_module):
    events = []
    result = runs.train(iris_d, "iris", epochs=3, out=tmp_path / "run", module=iris_module,
                        progress=events.append)
    out = tmp_path / "run"
    names = {p.name for p in out.iterdir()}
    assert {"params.npz", "history.csv", "history.json", "loss.png", "report.json",
            "report.txt", "checkpoint.npz"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert result.status == "completed" and result.epochs_run == 3
    # history: epoch 0 (initial point) and one row per epoch, with validation accuracy
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert all("val_accuracy" in h for h in result.history)
    assert math.isclose(result.history[0]["train_loss"], math.log(3))  # zero init
    header = (out / "history.csv").read_text().splitlines()[0]
    assert header.split(",")[:4] == ["epoch", "train_loss", "val_loss", "val_accuracy"]
    assert json.loads((out / "history.json").read_text()) == json.loads(
        json.dumps(result.history))
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    assert report["data"]["samples"] == result.data.sizes()
    assert 0 <= report["metrics"]["test_accuracy"] <= 1
    assert "test: loss" in (out / "report.txt").read_text()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # parameters: numeric arrays, no pickles, metadata as JSON
    arrays, meta = load_npz_safe(out / "params.npz")
    assert sorted(arrays) == ["W", "b"] and meta["spec_digest"] == iris_d.spec.digest
    with np.load(out / "params.npz", allow_pickle=False) as loaded:
        assert np.array_equal(loaded["W"], result.params["W"])
    # the checkpoint belongs to this spec and holds the last epoch
    ckpt = load_checkpoint(out / "checkpoint.npz", spec_hash=iris_d.spec.digest,
                           shapes={"W": (3, 4), "b": (3,), **{
                               k: v.shape for k, v in load_npz_safe(
                                   out / "checkpoint.npz")[0].items() if k.startswith("opt.")}})
    assert ckpt.epoch == 3
    stages = [e.stage for e in events]
    assert stages.count("epoch") == 3 and stages[-1] == "done" and "train" in stages
    # predictions on raw features
    assert result.predict(result.data.X_test[:5]).shape == (5,)


def test_api_without_out_writes_nothing(tmp_path, iris_d, iris_module, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runs.train(iris_d, "iris", epochs=1, module=iris_module)
    assert result.paths == {} and list(tmp_path.iterdir()) == []


@pytest.mark.reliability("F39")
def test_resume_continues_bit_for_bit(tmp_path, iris_d, iris_module):
    straight = runs.train(iris_d, "iris", epochs=4, out=tmp_path / "a", module=iris_module)
    runs.train(iris_d, "iris", epochs=2, out=tmp_path / "b", module=iris_module)
    resumed = runs.train(iris_d, "iris", epochs=4, out=tmp_path / "b", module=iris_module,
                         resume=tmp_path / "b" / "checkpoint.npz")
    for name in straight.params:
        assert np.array_equal(straight.params[name], resumed.params[name])
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert resumed.report["resumed_from"].endswith("checkpoint.npz")


@pytest.mark.reliability("F39")
def test_resume_refuses_another_spec(tmp_path, iris_d, iris_module):
    runs.train(iris_d, "iris", epochs=1, out=tmp_path / "a", module=iris_module)
    other = derive(softmax_iris(lr=0.01))
    before = snapshot(tmp_path / "a")
    with pytest.raises(CheckpointError, match="spec hash"):
        runs.train(other, "iris", epochs=2, out=tmp_path / "a", module=StandIn(other),
                   resume=tmp_path / "a" / "checkpoint.npz")
    assert snapshot(tmp_path / "a") == before


def test_resume_refuses_other_data_options(tmp_path, iris_d, iris_module):
    runs.train(iris_d, "iris", epochs=1, out=tmp_path / "a", module=iris_module)
    with pytest.raises(CheckpointError, match="val_split"):
        runs.train(iris_d, "iris", epochs=2, val_split=0.2, module=iris_module,
                   resume=tmp_path / "a" / "checkpoint.npz")
    with pytest.raises(CheckpointError, match="optimizer"):
        runs.train(iris_d, "iris", epochs=2, optimizer="sgd", module=iris_module,
                   resume=tmp_path / "a" / "checkpoint.npz")


@pytest.mark.reliability("F36")
def test_unwritable_output_fails_before_training(tmp_path, iris_d):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError("the module was used before the output check")

    with pytest.raises(OutputError):
        runs.train(iris_d, "iris", out=blocker / "run", module=Untouchable())
    with pytest.raises(OutputError, match="is a file"):
        runs.train(iris_d, "iris", out=blocker, module=Untouchable())
    assert blocker.read_text() == "not a folder"


# ---------------------------------------------------------------------------- early stopping


def test_early_stopping_restores_the_best_epoch(tmp_path):
    d = derive(linreg())
    fake = Scripted([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 1.0, 1.0])
    result = runs.train(d, regression_data(), epochs=8, patience=2, out=tmp_path,
                        module=fake)
    assert result.status == "early_stopped"
    assert result.best_epoch == 3 and result.epochs_run == 5
    assert result.params["w"][0] == 3.0
    assert "keeping epoch 3" in result.message
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["best_epoch"] == 3 and report["status"] == "early_stopped"


# ---------------------------------------------------------------------------- divergence


@pytest.mark.reliability("D26")
def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    d = derive(linreg())
    fake = Scripted([5.0, 4.0, math.nan, 1.0, 1.0])
    result = runs.train(d, regression_data(), epochs=5, out=tmp_path, module=fake)
    assert result.status == "diverged" and not result.ok
    assert result.epochs_run == 2 and result.params["w"][0] == 4.0
    assert "epoch 3" in result.message and "the training loss became nan" in result.message
    assert "last finite training loss was 4" in result.message
    assert "lower the learning rate" in result.message and "(step 3)" in result.message
    arrays, meta = load_npz_safe(tmp_path / "checkpoint.npz")
    assert meta["epoch"] == 2 and arrays["w"][0] == 4.0


@pytest.mark.reliability("D26")
def test_divergence_with_a_real_optimizer_step(tmp_path):
    d = derive(linreg())
    X, y = regression_data(features=3)
    result = runs.train(d, (X * 100, y * 100), lr=1e3, epochs=50, out=tmp_path,
                        module=StandIn(d))
    assert result.status == "diverged"
    assert result.epochs_run < 50
    arrays, meta = load_npz_safe(tmp_path / "checkpoint.npz")
    assert all(np.all(np.isfinite(v)) for v in arrays.values())
    assert meta["epoch"] == result.epochs_run


# ---------------------------------------------------------------------------- domain errors


@pytest.mark.reliability("D27")
def test_data_outside_a_formula_domain_names_sample_and_formula():
    spec = Spec.build(name="logfit", inputs={"t": 1}, targets={"y": 1},
                      params={"a": {"init": 1.0}, "c": {}},
                      model={"yhat": "a * log(t) + c"}, loss="square(yhat - y)")
    d = derive(spec)
    t = np.array([1.0, 2.0, 3.0, -1.0, 5.0, 6.0, 7.0, 8.0])
    with pytest.raises(DomainError, match=r'arrays: sample 3 \(0-based, in file order\).*'
                                          r'model.yhat = "a \* log\(t\) \+ c" gives nan'):
        runs.train(d, (t, 2 * t), module=StandIn(d))


# ---------------------------------------------------------------------------- helpers


def test_r2_matches_definition():
    class M:
        def predict(self, params, X):
            return X[:, 0]

    X = np.array([[1.0], [2.0], [3.0]])
    y = np.array([1.0, 2.0, 4.0])
    expected = 1 - ((y - X[:, 0]) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert math.isclose(runs._r2(M(), None, X, y), expected)


def test_optimizer_state_round_trips():
    State = namedtuple("State", ["m", "step"])
    state = {"adam": State(m=(np.ones(3), np.zeros((2, 2))), step=7), "lr_t": 0.5, "x": None}
    tree, arrays = runs._flatten_state(state)
    json.dumps(tree)
    back = runs._unflatten_state(tree, arrays, object(), np.dtype(np.float32))
    assert back["adam"].step == 7 and back["adam"].m[1].dtype == np.float32
    assert back["lr_t"] == 0.5 and back["x"] is None


# ---------------------------------------------------------------------------- the real module


@pytest.fixture(scope="module")
def module_cache(pytestconfig, tmp_path_factory):
    """The generated-module cache the CLI tests use too: each spec compiles once."""
    if getattr(pytestconfig, "cache", None) is not None:
        return Path(pytestconfig.cache.mkdir("symgrad-modules"))
    return tmp_path_factory.mktemp("symgrad-modules")


def test_notebook_api_with_the_generated_module(tmp_path, module_cache):
    import symgrad

    events = []
    result = symgrad.train(runs.demo_spec(), "digits", epochs=3, out=tmp_path / "run",
                           cache_dir=module_cache, progress=events.append, patience=5)
    assert isinstance(result, symgrad.TrainResult) and result.status == "completed"
    assert result.module.SPEC_DIGEST.endswith(runs.demo_spec().digest)
    assert [e.epoch for e in events if e.stage == "epoch"] == [1, 2, 3]
    assert all(isinstance(e, symgrad.Progress) for e in events)
    assert 0.5 < result.metrics["test_accuracy"] <= 1
    assert set(result.paths) >= {"params.npz", "report.json", "loss.png", "checkpoint.npz",
                                 "module"}
    assert result.paths["module"].read_text() == result.module.__loader__.get_data(
        result.module.__file__).decode()
    labels = result.predict(result.data.X_test[:7])
    assert labels.shape == (7,) and labels.dtype.kind == "i"
    # float32 training runs the same module
    small = symgrad.train(runs.demo_spec(), "digits", epochs=1, dtype="float32",
                          cache_dir=module_cache)
    assert small.params["W1"].dtype == np.float32


def test_without_validation_the_training_accuracy_is_tracked(iris_d, iris_module):
    result = runs.train(iris_d, "iris", epochs=2, val_split=0, module=iris_module)
    assert all("train_accuracy" in h and "val_loss" not in h for h in result.history)
    png = runs.plot_history(result.history, "t")
    assert png[:4] == b"\x89PNG"
