"""Training data: bundled datasets, CSV, ``.npz``/``.npy`` and MNIST IDX files, checked on load.

Every loaded array is numeric and finite; files are read without unpickling and with a size
cap checked before allocation. Each :class:`DataError` names the source, what is wrong, where
(line, column, key or sample index) and how to fix it.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from symgrad.fileio import (
    DEFAULT_MAX_BYTES,
    FileFormatError,
    load_npy_safe,
    load_npz_safe,
)

__all__ = [
    "BUNDLED_DATASETS",
    "DEFAULT_MAX_BYTES",
    "DataError",
    "Dataset",
    "check_against_spec",
    "load_data",
    "split",
    "standardize",
]

#: Offline datasets shipped with scikit-learn: name -> (loader function, is classification).
BUNDLED_DATASETS: dict[str, tuple[str, bool]] = {
    "breast_cancer": ("load_breast_cancer", True),
    "diabetes": ("load_diabetes", False),
    "digits": ("load_digits", True),
    "iris": ("load_iris", True),
}
_ALIASES = {"breast-cancer": "breast_cancer"}
_IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class DataError(Exception):
    """Training data is missing, malformed, unsafe, or does not fit the spec."""


@dataclass
class Dataset:
    """Loaded training data; arrays are (samples, features) float64, targets (n,) or (n, k).

    ``y`` holds int64 when the target is integer-valued (usable as labels), else float64.
    ``n_classes`` is set for classification datasets: bundled ones and the MNIST layouts
    (IDX directory, Keras ``x_train``/``y_train`` .npz); other files leave it to the spec.
    """

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    feature_names: list[str]
    target_name: str
    source: str
    n_classes: int | None = None


def load_data(
    source: str,
    *,
    target: str | None = None,
    x_key: str | None = None,
    y_key: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Dataset:
    """Load a bundled dataset by name, or a ``.csv``/``.npz``/``.npy`` file or MNIST IDX directory.

    Bundled names win over same-named files; write ``./digits`` to mean a file.
    ``target`` is the CSV target column name or the ``.npy`` target column index (default: last).
    ``x_key``/``y_key`` pick the arrays of an ``.npz``. Raises DataError.
    """
    name = _ALIASES.get(source, source)
    if name in BUNDLED_DATASETS:
        return _load_bundled(name)
    path = Path(source)
    if path.is_dir():
        dataset = _load_idx_dir(path, max_bytes)
    elif path.is_file():
        loaders = {".csv": _load_csv, ".npz": _load_npz, ".npy": _load_npy}
        loader = loaders.get(path.suffix.lower())
        if loader is None:
            raise DataError(
                f"{source}: unsupported file type {path.suffix or '(no extension)'!r}; use .csv, "
                ".npz, .npy, an MNIST IDX directory, or one of: "
                + ", ".join(sorted(BUNDLED_DATASETS))
            )
        dataset = loader(
            path, target=target, x_key=x_key, y_key=y_key, max_bytes=max_bytes
        )
    elif path.suffix or len(path.parts) > 1:
        raise DataError(f"{source}: file not found; check the path")
    else:
        choices = sorted([*BUNDLED_DATASETS, *_ALIASES])
        close = difflib.get_close_matches(source, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(
            f"{source!r} is neither a file nor a bundled dataset{hint}; bundled datasets: "
            + ", ".join(sorted(BUNDLED_DATASETS))
        )
    _check_finite(dataset.X, "X", dataset.source)
    _check_finite(dataset.y, "y", dataset.source)
    if dataset.X_test is not None and dataset.y_test is not None:
        _check_finite(dataset.X_test, "X_test", dataset.source)
        _check_finite(dataset.y_test, "y_test", dataset.source)
    return dataset


# ---------------------------------------------------------------------------- helpers


def _check_finite(array: np.ndarray, what: str, source: str) -> None:
    """Raise naming the first NaN/inf entry, as (row, column) for 2-D arrays."""
    if array.dtype.kind != "f":
        return
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        where = {1: f"sample {index[0]}", 2: f"row {index[0]}, column {index[-1]}"}.get(
            len(index), f"index {index}"
        )
        raise DataError(
            f"{source}: {what} has a non-finite value ({array[index]}) at {where}; "
            "remove or impute such samples before training"
        )


def _labels_or_float(y: np.ndarray) -> np.ndarray:
    """int64 when ``y`` holds only whole numbers (usable as labels), else float64."""
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    y = y.astype(np.float64)
    if (
        y.size
        and np.all(np.isfinite(y))
        and np.all(y == np.round(y))
        and np.all(np.abs(y) < 2**53)
    ):
        return y.astype(np.int64)
    return y


def _as_features(x: np.ndarray, where: str) -> np.ndarray:
    """(n,) -> (n, 1); image stacks (n, h, w, ...) -> (n, h*w*...), uint8 scaled to [0, 1]."""
    if x.ndim == 0:
        raise DataError(f"{where}: expected an array of samples, got a scalar")
    if x.ndim == 1:
        return x.astype(np.float64).reshape(-1, 1)
    if x.ndim == 2:
        return x.astype(np.float64)
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    if x.dtype == np.uint8:
        flat /= 255.0
    return flat


def _as_targets(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim not in (1, 2):
        raise DataError(
            f"{where}: targets must be (samples,) or (samples, k), got shape {y.shape}"
        )
    return _labels_or_float(y)


def _pair(X: np.ndarray, y: np.ndarray, where: str) -> None:
    if X.shape[0] != y.shape[0]:
        raise DataError(
            f"{where}: features have {X.shape[0]} samples but targets have {y.shape[0]}; "
            "they must have one target per sample"
        )


def _n_classes(*ys: np.ndarray) -> int | None:
    """Class count for 1-D non-negative integer labels, else None."""
    if not all(y.ndim == 1 and y.dtype.kind in "iu" and y.size for y in ys):
        return None
    if min(int(y.min()) for y in ys) < 0:
        return None
    return max(int(y.max()) for y in ys) + 1


# ---------------------------------------------------------------------------- bundled


def _load_bundled(name: str) -> Dataset:
    import sklearn.datasets  # lazy: only bundled datasets need scikit-learn

    loader_name, is_classification = BUNDLED_DATASETS[name]
    bunch = getattr(sklearn.datasets, loader_name)()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    y = y.astype(np.int64) if is_classification else y.astype(np.float64)
    names = getattr(bunch, "feature_names", None)
    feature_names = (
        [str(n) for n in names]
        if names is not None
        else [f"x{i}" for i in range(X.shape[1])]
    )
    return Dataset(
        X=X,
        y=y,
        X_test=None,
        y_test=None,
        feature_names=feature_names,
        target_name="target",
        source=name,
        n_classes=int(y.max()) + 1 if is_classification else None,
    )


# ---------------------------------------------------------------------------- CSV


def _parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _load_csv(
    path: Path,
    *,
    target: str | None,
    x_key: str | None,
    y_key: str | None,
    max_bytes: int,
) -> Dataset:
    """Header row required; the target column (default: last) becomes y, the rest X."""
    del x_key, y_key  # only meaningful for .npz
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(
            f"{path}: {size} bytes is over the {max_bytes}-byte limit; raise --max-bytes"
        )
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [field.strip() for field in next(reader, [])]
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row:
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, the header has "
                        f"{len(header)}; make every row as long as the header"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8"
        ) from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc}); check quoting") from exc
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions"
        ) from exc
    _check_header(path, header)
    if not rows:
        raise DataError(f"{path}: no data rows after the header; add samples")
    target_column = _target_column(path, header, target)
    table = _parse_table(path, header, rows, lines)
    features = [i for i in range(len(header)) if i != target_column]
    X = table[:, features]
    y = _labels_or_float(table[:, target_column])
    return Dataset(
        X=X,
        y=y,
        X_test=None,
        y_test=None,
        feature_names=[header[i] for i in features],
        target_name=header[target_column],
        source=str(path),
        n_classes=None,
    )


def _check_header(path: Path, header: list[str]) -> None:
    if not header or header == [""]:
        raise DataError(
            f"{path}: empty file; add a header row naming the columns, then data rows"
        )
    if all(_parse_number(field) is not None for field in header):
        raise DataError(
            f"{path}: line 1 looks like data, not a header; add a header row naming the columns"
        )
    if len(header) < 2:
        raise DataError(
            f"{path}: only one column ({header[0]!r}); need feature columns and a target"
        )
    for column, name in enumerate(header, start=1):
        if not name:
            raise DataError(
                f"{path}: line 1, column {column}: empty column name; name every column"
            )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(
            f"{path}: line 1: duplicate column names {duplicates}; make names unique"
        )


def _target_column(path: Path, header: list[str], target: str | None) -> int:
    if target is None:
        return len(header) - 1
    if target in header:
        return header.index(target)
    close = difflib.get_close_matches(target, header, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(
        f"{path}: no column named {target!r}{hint}; columns: {', '.join(header)}"
    )


def _parse_table(
    path: Path, header: list[str], rows: list[list[str]], lines: list[int]
) -> np.ndarray:
    """Convert all fields at once; on failure, find and name the first bad field."""
    try:
        table = np.array(rows, dtype=np.float64)
    except ValueError:
        for row, line in zip(rows, lines, strict=True):
            for column, field in enumerate(row):
                if not field.strip():
                    raise DataError(
                        f"{path}: line {line}, column {header[column]!r}: empty field; "
                        "fill it in or remove the row"
                    ) from None
                if _parse_number(field) is None:
                    raise DataError(
                        f"{path}: line {line}, column {header[column]!r}: {field!r} is not a "
                        "number; all columns must be numeric"
                    ) from None
        table = np.array(
            [[float(field) for field in row] for row in rows], dtype=np.float64
        )
    bad = np.argwhere(~np.isfinite(table))
    if bad.size:
        index, column = (int(i) for i in bad[0])
        raise DataError(
            f"{path}: line {lines[index]}, column {header[column]!r}: "
            f"{rows[index][column].strip()!r} "
            "is not a finite number; remove or impute the row (NaN/inf are never trained on)"
        )
    return table


# ---------------------------------------------------------------------------- .npz / .npy


def _load_npz(
    path: Path,
    *,
    target: str | None,
    x_key: str | None,
    y_key: str | None,
    max_bytes: int,
) -> Dataset:
    """Keys ``x``/``X`` and ``y``, the Keras MNIST layout, or ``x_key``/``y_key``."""
    del target  # only meaningful for .csv/.npy
    try:
        arrays, _ = load_npz_safe(path, max_bytes=max_bytes)
    except FileFormatError as exc:
        raise DataError(str(exc)) from exc

    def pick(
        key: str | None, candidates: tuple[str, ...], role: str
    ) -> tuple[str, np.ndarray]:
        wanted = (key,) if key is not None else candidates
        for name in wanted:
            if name in arrays:
                return name, arrays[name]
        raise DataError(
            f"{path}: no {role} array named {' or '.join(repr(w) for w in wanted)}; keys present: "
            f"{', '.join(sorted(arrays)) or '(none)'}; choose them with --x-key/--y-key"
        )

    explicit = x_key is not None or y_key is not None
    if not explicit and "x_train" in arrays and "y_train" in arrays:
        return _keras_layout(path, arrays)
    xk, x = pick(x_key, ("x", "X", "x_train"), "feature")
    yk, y = pick(y_key, ("y", "Y", "y_train"), "target")
    X = _as_features(x, f"{path}[{xk}]")
    Y = _as_targets(y, f"{path}[{yk}]")
    _pair(X, Y, str(path))
    return Dataset(
        X=X,
        y=Y,
        X_test=None,
        y_test=None,
        feature_names=[f"x{i}" for i in range(X.shape[1])],
        target_name=yk,
        source=str(path),
        n_classes=None,
    )


def _keras_layout(path: Path, arrays: dict[str, np.ndarray]) -> Dataset:
    """``x_train, y_train[, x_test, y_test]`` as in Keras' ``mnist.npz``."""
    X = _as_features(arrays["x_train"], f"{path}[x_train]")
    y = _as_targets(arrays["y_train"], f"{path}[y_train]")
    _pair(X, y, f"{path} (x_train, y_train)")
    has_test = "x_test" in arrays, "y_test" in arrays
    if any(has_test) and not all(has_test):
        missing = "y_test" if has_test[0] else "x_test"
        raise DataError(
            f"{path}: has {'x_test' if has_test[0] else 'y_test'} but no {missing}; keys present: "
            f"{', '.join(sorted(arrays))}; store both or neither"
        )
    X_test = y_test = None
    if all(has_test):
        X_test = _as_features(arrays["x_test"], f"{path}[x_test]")
        y_test = _as_targets(arrays["y_test"], f"{path}[y_test]")
        _pair(X_test, y_test, f"{path} (x_test, y_test)")
        if X_test.shape[1] != X.shape[1]:
            raise DataError(
                f"{path}: x_train has {X.shape[1]} features per sample, x_test has "
                f"{X_test.shape[1]}; they must match"
            )
    return _image_dataset(X, y, X_test, y_test, target_name="y_train", source=str(path))


def _load_npy(
    path: Path,
    *,
    target: str | None,
    x_key: str | None,
    y_key: str | None,
    max_bytes: int,
) -> Dataset:
    """A 2-D array whose column ``int(target)`` (default: last) is the target."""
    del x_key, y_key  # only meaningful for .npz
    try:
        table = load_npy_safe(path, max_bytes=max_bytes)
    except FileFormatError as exc:
        raise DataError(str(exc)) from exc
    if table.ndim != 2 or table.shape[1] < 2:
        raise DataError(
            f"{path}: expected a 2-D array (samples, features + target), got shape {table.shape}; "
            "or save features and targets as x and y in an .npz"
        )
    columns = table.shape[1]
    try:
        column = int(target) if target is not None else columns - 1
    except ValueError:
        raise DataError(
            f"{path}: target {target!r} must be a column index for .npy files"
        ) from None
    if not -columns <= column < columns:
        raise DataError(
            f"{path}: target column {column} is out of range for {columns} columns"
        )
    column %= columns
    features = [i for i in range(columns) if i != column]
    X = table[:, features].astype(np.float64)
    return Dataset(
        X=X,
        y=_labels_or_float(table[:, column]),
        X_test=None,
        y_test=None,
        feature_names=[f"x{i}" for i in features],
        target_name=f"column {column}",
        source=str(path),
        n_classes=None,
    )


# ---------------------------------------------------------------------------- MNIST IDX


def _find_idx(directory: Path, prefix: str, kind: str) -> Path | None:
    """``train-images-idx3-ubyte`` (also ``.idx3-ubyte`` and ``.gz`` spellings) or None."""
    rank = "idx3" if kind == "images" else "idx1"
    for base in (f"{prefix}-{kind}-{rank}-ubyte", f"{prefix}-{kind}.{rank}-ubyte"):
        for name in (base, f"{base}.gz"):
            if (directory / name).is_file():
                return directory / name
    return None


def _read_idx(path: Path, max_bytes: int) -> np.ndarray:
    """Parse an IDX file: 2 zero bytes, dtype code, ndim, ndim big-endian uint32 dims, data."""
    try:
        opened = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
        with opened as stream:
            return _read_idx_stream(path, stream, max_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: unreadable or truncated ({exc}); re-download the MNIST file"
        ) from exc


def _read_idx_stream(
    path: Path, stream: io.BufferedIOBase, max_bytes: int
) -> np.ndarray:
    magic = stream.read(4)
    if (
        len(magic) < 4
        or magic[:2] != b"\0\0"
        or magic[2] not in _IDX_DTYPES
        or magic[3] == 0
    ):
        raise DataError(
            f"{path}: not an IDX file (bad magic number {magic.hex() or 'none'})"
        )
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    ndim = magic[3]
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header; re-download the file")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > max_bytes:
        raise DataError(
            f"{path}: the IDX header declares shape {dims} ({nbytes} bytes), over the "
            f"{max_bytes}-byte limit; raise --max-bytes if the file is genuine"
        )
    expected = 4 + 4 * ndim + nbytes
    if path.suffix != ".gz" and path.stat().st_size != expected:
        raise DataError(
            f"{path}: file is {path.stat().st_size} bytes, its IDX header (shape {dims}) implies "
            f"{expected}; the file is truncated or corrupt, re-download it"
        )
    payload = bytearray()
    while len(payload) < nbytes:
        chunk = stream.read(min(16 * 1024**2, nbytes - len(payload)))
        if not chunk:
            raise DataError(
                f"{path}: truncated: header (shape {dims}) declares {nbytes} data bytes, found "
                f"{len(payload)}; re-download the file"
            )
        payload += chunk
    if stream.read(1):
        raise DataError(
            f"{path}: extra bytes after the data its IDX header (shape {dims}) declares"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims)


def _load_idx_pair(
    directory: Path, prefix: str, max_bytes: int
) -> tuple[np.ndarray, np.ndarray] | None:
    images_path = _find_idx(directory, prefix, "images")
    labels_path = _find_idx(directory, prefix, "labels")
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        missing = (
            f"{prefix}-{'images-idx3' if images_path is None else 'labels-idx1'}-ubyte"
        )
        raise DataError(
            f"{directory}: found one {prefix} IDX file but not {missing}(.gz); add it"
        )
    images = _read_idx(images_path, max_bytes)
    labels = _read_idx(labels_path, max_bytes)
    if images.ndim != 3:
        raise DataError(
            f"{images_path}: expected (samples, rows, cols) images, got shape {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path}: expected (samples,) labels, got shape {labels.shape}"
        )
    X = _as_features(images, str(images_path))
    y = _as_targets(labels, str(labels_path))
    _pair(X, y, f"{images_path} / {labels_path}")
    return X, y


def _load_idx_dir(directory: Path, max_bytes: int) -> Dataset:
    """MNIST IDX files: ``train-*`` required, ``t10k-*`` optional."""
    train = _load_idx_pair(directory, "train", max_bytes)
    if train is None:
        raise DataError(
            f"{directory}: is a directory without train-images-idx3-ubyte and "
            "train-labels-idx1-ubyte (or .gz); point at an MNIST IDX directory or a data file"
        )
    test = _load_idx_pair(directory, "t10k", max_bytes)
    X, y = train
    X_test, y_test = test if test is not None else (None, None)
    return _image_dataset(X, y, X_test, y_test, target_name="label", source=str(directory))


def _image_dataset(X: np.ndarray, y: np.ndarray, X_test: np.ndarray | None,
                   y_test: np.ndarray | None, *, target_name: str, source: str) -> Dataset:
    """A Dataset of flattened images with integer labels (Keras mnist.npz or IDX files)."""
    labels = (y,) if y_test is None else (y, y_test)
    return Dataset(X=X, y=y, X_test=X_test, y_test=y_test,
                   feature_names=[f"x{i}" for i in range(X.shape[1])], target_name=target_name,
                   source=source, n_classes=_n_classes(*labels))


# ---------------------------------------------------------------------------- spec fit, split


def check_against_spec(
    ds_X: np.ndarray,
    ds_y: np.ndarray,
    *,
    n_features: int,
    n_classes: int | None,
    target_size: int | None,
    source: str,
    input_name: str = "x",
) -> np.ndarray:
    """Check data against the spec; return y ready for training.

    Classifiers (``n_classes`` set) get int64 labels of shape (n,), each in [0, n_classes);
    regression gets float64 targets of shape (n, target_size), or (n,) when there is one
    value per sample (a size-1 spec target is a scalar); (n,) and (n, 1) data both fit it.
    """
    if ds_X.ndim != 2 or ds_X.shape[1] != n_features:
        have = f"{ds_X.shape[1]} features" if ds_X.ndim == 2 else f"shape {ds_X.shape}"
        raise DataError(
            f"{source}: data has {have}, the spec's input {input_name} expects {n_features}; "
            "use matching data or change the input's shape in the spec"
        )
    if ds_y.shape[0] != ds_X.shape[0]:
        raise DataError(
            f"{source}: {ds_X.shape[0]} samples but {ds_y.shape[0]} targets"
        )
    if n_classes is not None:
        return _check_labels(ds_y, n_classes, source)
    y = ds_y.astype(np.float64)
    per_sample = math.prod(y.shape[1:])
    if target_size is not None and (y.ndim > 2 or per_sample != target_size):
        raise DataError(
            f"{source}: targets have shape {ds_y.shape} ({per_sample} values per sample), the "
            f"spec's target expects {target_size} per sample; choose the right target column(s)"
        )
    return y.reshape(-1) if per_sample == 1 else y


def _check_labels(ds_y: np.ndarray, n_classes: int, source: str) -> np.ndarray:
    y = ds_y.reshape(-1) if ds_y.ndim == 2 and ds_y.shape[1] == 1 else ds_y
    if y.ndim != 1:
        raise DataError(
            f"{source}: a classifier needs 1-D class indices, got targets of shape {ds_y.shape}; "
            "store labels as integers 0..n_classes-1"
        )
    values = y.astype(np.float64)
    bad = (
        ~np.isfinite(values)
        | (values != np.round(values))
        | (values < 0)
        | (values >= n_classes)
    )
    if np.any(bad):
        index = int(np.argmax(bad))
        value = y[index]
        shown = int(value) if float(value).is_integer() else float(value)
        reason = (
            "is not an integer class index"
            if not float(value).is_integer()
            else "is out of range"
        )
        raise DataError(
            f"{source}: sample {index} has label {shown}, which {reason}; the spec has "
            f"{n_classes} classes, so labels must be integers 0..{n_classes - 1}"
        )
    return values.astype(np.int64)


def split(
    X: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic shuffled split: ``X_train, y_train, X_test, y_test`` (test gets ≥ 1 sample)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}"
        )
    n = X.shape[0]
    if n < 2 or y.shape[0] != n:
        raise ValueError(
            f"need at least 2 samples with one target each to split, got X {X.shape}, y {y.shape}"
        )
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def standardize(
    X_train: np.ndarray, *X_other: np.ndarray
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray]]:
    """Scale to zero mean, unit variance using train statistics only.

    Returns ``((X_train', *X_other'), (mean, std))``; constant columns get std 1.
    """
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std = np.where(std <= 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0, std)
    scaled = tuple((X - mean) / std for X in (X_train, *X_other))
    return scaled, (mean, std)
