"""Data loading and checks (RELIABILITY_CASES E.28-E.34). Hostile files are built in tmp_path."""

from __future__ import annotations

import gzip
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat
import pytest

from symgrad.data import DataError, check_against_spec, load_data, split, standardize

# ---------------------------------------------------------------------------- bundled


@pytest.mark.parametrize(
    ("name", "shape", "n_classes"),
    [
        ("digits", (1797, 64), 10),
        ("iris", (150, 4), 3),
        ("breast_cancer", (569, 30), 2),
        ("breast-cancer", (569, 30), 2),
        ("diabetes", (442, 10), None),
    ],
)
def test_bundled_datasets(name, shape, n_classes):
    ds = load_data(name)
    assert ds.X.shape == shape
    assert ds.X.dtype == np.float64
    assert ds.y.shape == (shape[0],)
    assert ds.y.dtype == (np.int64 if n_classes else np.float64)
    assert ds.n_classes == n_classes
    assert len(ds.feature_names) == shape[1]
    assert ds.X_test is None and ds.y_test is None


def test_unknown_name_lists_bundled_with_hint():
    with pytest.raises(
        DataError,
        match=r"'digts' is neither a file nor a bundled dataset \(did you mean 'digits'\?\); bundled datasets: breast_cancer, diabetes, digits, iris",
    ):
        load_data("digts")


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}/none.csv: file not found"):
        load_data(str(tmp_path / "none.csv"))
    other = tmp_path / "data.json"
    other.write_text("{}")
    with pytest.raises(DataError, match=rf"{other}: unsupported file type '.json'"):
        load_data(str(other))


# ---------------------------------------------------------------------------- CSV


def write_csv(
    tmp_path: Path, text: str, name: str = "data.csv", bom: bool = False
) -> str:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return str(path)


@pytest.mark.reliability("E32")
def test_csv_with_bom_header_labels_and_blank_lines(tmp_path):
    path = write_csv(tmp_path, "a,b,label\n1,2,0\n3.5,-4e-1,2\n\n", bom=True)
    ds = load_data(path)
    assert ds.feature_names == ["a", "b"]
    assert ds.target_name == "label"
    np.testing.assert_array_equal(ds.X, [[1.0, 2.0], [3.5, -0.4]])
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.y, [0, 2])
    assert ds.source == path


def test_csv_target_column_by_name_and_float_target(tmp_path):
    path = write_csv(tmp_path, "t,y,x2\n0.5,1.25,3\n1.0,2.5,4\n")
    ds = load_data(path, target="y")
    assert ds.feature_names == ["t", "x2"]
    assert ds.y.dtype == np.float64
    np.testing.assert_array_equal(ds.y, [1.25, 2.5])


def test_csv_unknown_target_lists_columns(tmp_path):
    path = write_csv(tmp_path, "t,yy\n1,2\n")
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{path}: no column named 'y' (did you mean 'yy'?); columns: t, yy"
        ),
    ):
        load_data(path, target="y")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a,b\n1,2\n3,nan\n", "line 3, column 'b': 'nan' is not a finite number"),
        ("a,b\n1,2\ninf,4\n", "line 3, column 'a': 'inf' is not a finite number"),
        ("a,b\n1,1e400\n", "line 2, column 'b': '1e400' is not a finite number"),
        ("a,b\n1,2\n3,\n", "line 3, column 'b': empty field"),
        ("a,b\n1,2\n3,4,5\n", "line 3 has 3 fields, the header has 2"),
        ("a,b\n1,2\n3\n", "line 3 has 1 fields, the header has 2"),
        ("a,b\n1,two\n", "line 2, column 'b': 'two' is not a number"),
        ("1,2\n3,4\n", "line 1 looks like data, not a header"),
        ("a,b\n", "no data rows after the header"),
        ("", "empty file"),
        ("a\n1\n", "only one column"),
        ("a,a\n1,2\n", r"line 1: duplicate column names \['a'\]"),
        ("a,\n1,2\n", "line 1, column 2: empty column name"),
    ],
)
@pytest.mark.reliability("E32")
def test_csv_hostile_inputs(tmp_path, body, message):
    path = write_csv(tmp_path, body)
    with pytest.raises(DataError, match=f"^{re.escape(path)}: .*{message}"):
        load_data(path)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"a,b\n1,\xe9\n")
    with pytest.raises(DataError, match=rf"{path}: not UTF-8 text"):
        load_data(str(path))


@pytest.mark.reliability("E31")
def test_csv_over_size_cap(tmp_path):
    path = write_csv(tmp_path, "a,b\n" + "1,2\n" * 100)
    with pytest.raises(
        DataError, match=rf"{path}: \d+ bytes is over the 100-byte limit"
    ):
        load_data(path, max_bytes=100)


# ---------------------------------------------------------------------------- .npz / .npy


def test_npz_x_y_and_upper_x(tmp_path):
    lower = tmp_path / "lower.npz"
    np.savez(lower, x=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 1]))
    ds = load_data(str(lower))
    assert ds.X.shape == (3, 2) and ds.y.dtype == np.int64
    upper = tmp_path / "upper.npz"
    np.savez(upper, X=np.arange(3.0), y=np.array([0.5, 1.5, 2.5]))
    ds = load_data(str(upper))
    assert ds.X.shape == (3, 1)
    assert ds.y.dtype == np.float64


def test_npz_explicit_keys(tmp_path):
    path = tmp_path / "custom.npz"
    np.savez(path, inputs=np.ones((4, 3)), targets=np.zeros((4, 2)))
    ds = load_data(str(path), x_key="inputs", y_key="targets")
    assert ds.X.shape == (4, 3) and ds.y.shape == (4, 2)
    with pytest.raises(
        DataError,
        match=rf"{path}: no feature array named 'x_train'; keys present: inputs, targets",
    ):
        load_data(str(path), x_key="x_train", y_key="targets")


@pytest.mark.reliability("E30")
def test_npz_missing_keys_lists_keys_present(tmp_path):
    path = tmp_path / "odd.npz"
    np.savez(path, features=np.ones((2, 2)), labels=np.zeros(2))
    with pytest.raises(
        DataError,
        match=rf"{path}: no feature array named 'x' or 'X' or 'x_train'; keys present: features, labels; choose them with --x-key/--y-key",
    ):
        load_data(str(path))


def test_keras_mnist_layout_flattened_and_scaled(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    x_train = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    x_train[0, 0, 0] = 255
    np.savez(
        path,
        x_train=x_train,
        y_train=np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        x_test=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        y_test=np.array([5, 6], dtype=np.uint8),
    )
    ds = load_data(str(path))
    assert ds.X.shape == (6, 784) and ds.X_test.shape == (2, 784)
    assert ds.X.dtype == np.float64 and ds.X[0, 0] == 1.0
    assert ds.X.min() >= 0.0 and ds.X.max() <= 1.0
    np.testing.assert_allclose(ds.X[1], x_train[1].reshape(-1) / 255.0)
    assert ds.y.dtype == np.int64 and ds.n_classes == 10


def test_keras_layout_with_half_a_test_set(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=np.zeros((2, 28, 28), np.uint8),
        y_train=np.zeros(2, np.uint8),
        x_test=np.zeros((1, 28, 28), np.uint8),
    )
    with pytest.raises(
        DataError,
        match=rf"{path}: has x_test but no y_test; keys present: x_test, x_train, y_train",
    ):
        load_data(str(path))


def test_npz_sample_count_mismatch(tmp_path):
    path = tmp_path / "mismatch.npz"
    np.savez(path, x=np.ones((5, 2)), y=np.ones(4))
    with pytest.raises(
        DataError, match=rf"{path}: features have 5 samples but targets have 4"
    ):
        load_data(str(path))


@pytest.mark.parametrize("where", ["x", "y"])
@pytest.mark.reliability("E32")
def test_non_finite_values_name_first_bad_index(tmp_path, where):
    path = tmp_path / "bad.npz"
    x = np.ones((4, 3))
    y = np.ones(4)
    if where == "x":
        x[2, 1] = np.inf
        x[3, 0] = np.nan
        expected = r"X has a non-finite value \(inf\) at row 2, column 1"
    else:
        y[3] = np.nan
        expected = r"y has a non-finite value \(nan\) at sample 3"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=rf"{path}: {expected}"):
        load_data(str(path))


def test_npy_table_with_target_column(tmp_path):
    path = tmp_path / "table.npy"
    table = np.array([[1.0, 0.0, 5.0], [2.0, 1.0, 6.0]])
    np.save(path, table)
    ds = load_data(str(path))
    np.testing.assert_array_equal(ds.X, table[:, :2])
    np.testing.assert_array_equal(ds.y, [5, 6])
    ds = load_data(str(path), target="1")
    np.testing.assert_array_equal(ds.X, table[:, [0, 2]])
    assert ds.target_name == "column 1"
    with pytest.raises(
        DataError, match=rf"{path}: target column 3 is out of range for 3 columns"
    ):
        load_data(str(path), target="3")
    with pytest.raises(DataError, match=rf"{path}: target 'y' must be a column index"):
        load_data(str(path), target="y")


def test_npy_one_dimensional_is_refused(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.arange(4.0))
    with pytest.raises(
        DataError, match=rf"{path}: expected a 2-D array .* got shape \(4,\)"
    ):
        load_data(str(path))


@pytest.mark.reliability("E29")
def test_text_file_named_npy(tmp_path):
    path = tmp_path / "fake.npy"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=rf"{path}: not a valid .npy array"):
        load_data(str(path))


class CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: proof that a loader ran pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
@pytest.mark.reliability("E28")
def test_pickle_payload_is_refused_and_never_run(tmp_path, suffix):
    sentinel = tmp_path / "PWNED"
    payload = np.array([CreatesFileWhenUnpickled(sentinel), 1], dtype=object)
    path = tmp_path / f"evil{suffix}"
    if suffix == ".npy":
        np.save(path, payload, allow_pickle=True)
    else:
        np.savez(path, x=payload, y=np.zeros(2))
    with pytest.raises(DataError, match=rf"{path}.*: pickled data is not allowed"):
        load_data(str(path))
    assert not sentinel.exists()


@pytest.mark.reliability("E29")
def test_truncated_and_non_zip_npz(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((100, 4)), y=np.zeros(100))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.npz"
    text.write_text("x,y\n")
    for path in (truncated, text):
        with pytest.raises(DataError, match=rf"{path}: not a valid .npz \(zip\) file"):
            load_data(str(path))


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    stream = io.BytesIO()
    npformat.write_array_header_1_0(
        stream, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return stream.getvalue()


@pytest.mark.reliability("E31")
def test_absurd_header_shape_is_refused_before_allocation(tmp_path):
    npz = tmp_path / "huge.npz"
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("x.npy", npy_header((10**12,)) + b"\0" * 64)
        archive.writestr("y.npy", npy_header((8,)) + b"\0" * 64)
    with pytest.raises(
        DataError,
        match=rf"{npz}\[x\]: the header declares shape \(1000000000000,\) \(8000000000000 bytes\), over the",
    ):
        load_data(str(npz))
    npy = tmp_path / "huge.npy"
    npy.write_bytes(npy_header((10**6, 10**6)) + b"\0" * 64)
    with pytest.raises(
        DataError, match=rf"{npy}: the header declares shape \(1000000, 1000000\)"
    ):
        load_data(str(npy))


@pytest.mark.reliability("E31")
def test_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_header((200_000, 10)) + bytes(16_000_000))
    assert path.stat().st_size < 100_000
    with pytest.raises(
        DataError,
        match=rf"{path}: the zip directory declares \d+ uncompressed bytes, over the 1000000-byte limit \(possible zip bomb\)",
    ):
        load_data(str(path), max_bytes=1_000_000)


# ---------------------------------------------------------------------------- MNIST IDX


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = (
        bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    )
    return header + array.tobytes()


def write_mnist_dir(
    directory: Path, *, gz: bool = False, test: bool = True
) -> np.ndarray:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    files = {
        "train-images-idx3-ubyte": idx_bytes(images),
        "train-labels-idx1-ubyte": idx_bytes(labels),
    }
    if test:
        files["t10k-images-idx3-ubyte"] = idx_bytes(images[:2])
        files["t10k-labels-idx1-ubyte"] = idx_bytes(labels[:2])
    directory.mkdir(exist_ok=True)
    for name, data in files.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return images


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_directory(tmp_path, gz):
    images = write_mnist_dir(tmp_path / "mnist", gz=gz)
    ds = load_data(str(tmp_path / "mnist"))
    assert ds.X.shape == (5, 784) and ds.X_test.shape == (2, 784)
    np.testing.assert_allclose(ds.X[2], images[2].reshape(-1) / 255.0)
    np.testing.assert_array_equal(ds.y, [3, 1, 4, 1, 5])
    assert ds.y.dtype == np.int64 and ds.n_classes == 6


def test_mnist_idx_without_test_files(tmp_path):
    write_mnist_dir(tmp_path / "mnist", test=False)
    ds = load_data(str(tmp_path / "mnist"))
    assert ds.X_test is None and ds.y_test is None


def test_truncated_idx_file(tmp_path):
    directory = tmp_path / "mnist"
    write_mnist_dir(directory, test=False)
    images = directory / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(
        DataError,
        match=rf"{images}: file is 3836 bytes, its IDX header \(shape \(5, 28, 28\)\) implies 3936",
    ):
        load_data(str(directory))


def test_truncated_gz_idx_file(tmp_path):
    directory = tmp_path / "mnist"
    write_mnist_dir(directory, gz=True, test=False)
    images = directory / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    with pytest.raises(
        DataError,
        match=rf"{images}: truncated: header \(shape \(5, 28, 28\)\) declares 3920 data bytes, found 3820",
    ):
        load_data(str(directory))


def test_idx_header_with_absurd_dims_is_refused(tmp_path):
    directory = tmp_path / "mnist"
    write_mnist_dir(directory, test=False)
    images = directory / "train-images-idx3-ubyte"
    images.write_bytes(
        bytes([0, 0, 8, 3]) + np.array([10**9, 28, 28], dtype=">u4").tobytes()
    )
    with pytest.raises(
        DataError,
        match=rf"{images}: the IDX header declares shape \(1000000000, 28, 28\)",
    ):
        load_data(str(directory))


def test_idx_bad_magic_and_missing_labels(tmp_path):
    directory = tmp_path / "mnist"
    write_mnist_dir(directory, test=False)
    images = directory / "train-images-idx3-ubyte"
    images.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(
        DataError, match=rf"{images}: not an IDX file \(bad magic number 47494638\)"
    ):
        load_data(str(directory))
    (directory / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DataError,
        match=rf"{directory}: found one train IDX file but not train-labels-idx1-ubyte",
    ):
        load_data(str(directory))


def test_directory_without_idx_files(tmp_path):
    with pytest.raises(
        DataError, match=rf"{tmp_path}: is a directory without train-images-idx3-ubyte"
    ):
        load_data(str(tmp_path))


# ---------------------------------------------------------------------------- spec checks


@pytest.mark.reliability("E34")
def test_feature_count_mismatch_names_both_sides():
    with pytest.raises(
        DataError,
        match=r"^digits: data has 64 features, the spec's input x expects 784",
    ):
        check_against_spec(
            np.ones((3, 64)),
            np.zeros(3),
            n_features=784,
            n_classes=10,
            target_size=None,
            source="digits",
        )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            [0, 9, 10],
            "sample 2 has label 10, which is out of range; the spec has 10 classes, so labels must be integers 0..9",
        ),
        ([-1, 0, 1], "sample 0 has label -1, which is out of range"),
        ([0, 2.5, 1], "sample 1 has label 2.5, which is not an integer class index"),
    ],
)
@pytest.mark.reliability("E33")
def test_bad_labels_name_the_sample(labels, message):
    with pytest.raises(DataError, match=f"^data.csv: {re.escape(message)}"):
        check_against_spec(
            np.ones((3, 2)),
            np.array(labels),
            n_features=2,
            n_classes=10,
            target_size=None,
            source="data.csv",
        )


def test_good_labels_become_int64():
    y = check_against_spec(
        np.ones((3, 2)),
        np.array([[0.0], [9.0], [3.0]]),
        n_features=2,
        n_classes=10,
        target_size=None,
        source="s",
    )
    assert y.dtype == np.int64 and y.shape == (3,)
    np.testing.assert_array_equal(y, [0, 9, 3])


def test_classifier_rejects_two_dimensional_targets():
    with pytest.raises(
        DataError,
        match=r"s: a classifier needs 1-D class indices, got targets of shape \(3, 2\)",
    ):
        check_against_spec(
            np.ones((3, 2)),
            np.ones((3, 2)),
            n_features=2,
            n_classes=2,
            target_size=None,
            source="s",
        )


def test_regression_target_width():
    y = check_against_spec(
        np.ones((3, 1)),
        np.arange(3),
        n_features=1,
        n_classes=None,
        target_size=1,
        source="s",
    )
    assert y.shape == (3,) and y.dtype == np.float64
    column = check_against_spec(
        np.ones((3, 1)),
        np.ones((3, 1)),
        n_features=1,
        n_classes=None,
        target_size=1,
        source="s",
    )
    assert column.shape == (3,)
    wide = check_against_spec(
        np.ones((3, 1)),
        np.ones((3, 2)),
        n_features=1,
        n_classes=None,
        target_size=2,
        source="s",
    )
    assert wide.shape == (3, 2)
    with pytest.raises(
        DataError,
        match=r"s: targets have shape \(3, 2\) \(2 values per sample\), the spec's target expects 3 per sample",
    ):
        check_against_spec(
            np.ones((3, 1)),
            np.ones((3, 2)),
            n_features=1,
            n_classes=None,
            target_size=3,
            source="s",
        )


def test_sample_count_mismatch_in_spec_check():
    with pytest.raises(DataError, match="s: 3 samples but 2 targets"):
        check_against_spec(
            np.ones((3, 1)),
            np.ones(2),
            n_features=1,
            n_classes=None,
            target_size=None,
            source="s",
        )


# ---------------------------------------------------------------------------- split, standardize


def test_split_is_deterministic_and_partitions():
    X = np.arange(20.0).reshape(10, 2)
    y = np.arange(10)
    first = split(X, y, test_fraction=0.3, seed=7)
    second = split(X, y, test_fraction=0.3, seed=7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    X_train, y_train, _, y_test = first
    assert len(y_test) == 3 and len(y_train) == 7
    assert sorted(np.concatenate([y_train, y_test])) == list(range(10))
    np.testing.assert_array_equal(X_train[:, 0], 2 * y_train)
    other = split(X, y, test_fraction=0.3, seed=8)
    assert not np.array_equal(other[3], y_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
        split(np.ones((4, 1)), np.ones(4), test_fraction=fraction, seed=0)


def test_standardize_uses_train_statistics_only():
    X_train = np.array([[1.0, 5.0], [3.0, 5.0]])
    X_test = np.array([[5.0, 6.0]])
    (train, test), (mean, std) = standardize(X_train, X_test)
    np.testing.assert_array_equal(mean, [2.0, 5.0])
    np.testing.assert_array_equal(std, [1.0, 1.0])  # constant column: std 1
    np.testing.assert_array_equal(train, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(test, [[3.0, 1.0]])


def test_standardize_constant_column_with_rounding_noise():
    X = np.full((7, 1), 0.1)
    (scaled,), (_, std) = standardize(X)
    assert std[0] == 1.0
    assert np.all(np.abs(scaled) < 1e-15)
