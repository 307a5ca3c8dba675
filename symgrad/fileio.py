"""Crash-safe files: atomic writes, pickle-free ``.npz``/``.npy`` reading, checked checkpoints.

Every write goes to a temporary file in the target's directory (``.<name>.<pid>.<random>.tmp``),
is flushed and fsynced, then moved over the target with ``os.replace``: a reader sees the old
file or the new one, never half of either. Arrays are read with a size cap checked against
the header *before* anything is allocated, and object (pickled) arrays are always refused.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

#: Largest array payload (bytes, uncompressed) a reader accepts unless told otherwise.
DEFAULT_MAX_BYTES = 2 * 1024**3

_CHUNK = 16 * 1024**2
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
_META_KEY = "__meta__"
_HISTORY_KEY = "__history__"
_CHECKPOINT_FORMAT = "symgrad-checkpoint"
_CHECKPOINT_VERSION = 1
_ZIP_EPOCH = (
    1980,
    1,
    1,
    0,
    0,
    0,
)  # fixed member timestamps keep .npz bytes reproducible


def _current_umask() -> int:
    """Read the umask (setting it back at once); done once, at import."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_current_umask()


class OutputError(Exception):
    """An output file or directory could not be written; the message names the path and the fix."""


class FileFormatError(Exception):
    """An input array file is missing, corrupt, too large or unsafe (e.g. contains pickles)."""


class CheckpointError(Exception):
    """A checkpoint is unreadable or belongs to another spec or other parameter shapes."""


def _fix_for(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space or choose another --out"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the directory writable or choose another --out"
    if exc.errno == errno.ENOTDIR:
        return "a parent of this path is a file, not a directory; choose another --out"
    return "check the path or choose another --out"


def _output_error(path: Path | str, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {path}: {reason}; {_fix_for(exc)}")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _temp_pattern(path: Path) -> re.Pattern[str]:
    """Matches exactly the temp names :func:`atomic_write_bytes` makes for ``path``."""
    return re.compile(rf"{re.escape(_temp_prefix(path))}(\d+)\.[a-z0-9_]+\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return True


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files for ``path`` left by writers that died (e.g. were SIGKILLed)."""
    pattern = _temp_pattern(path)
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                sibling.unlink()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems refuse fsync on a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> bool:
    """Replace ``path`` with ``data`` atomically; False (file untouched) when it already holds ``data``.

    Raises OutputError, leaving any previous file intact and no temp file behind.
    """
    target = Path(path)
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return False
    except OSError:
        pass  # missing or unreadable: write it (a real problem surfaces below)
    _remove_stale_temps(target)
    tmp: str | None = None
    try:
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except OSError:
            mode = _NEW_FILE_MODE
        fd, tmp = tempfile.mkstemp(
            dir=target.parent,
            prefix=f"{_temp_prefix(target)}{os.getpid()}.",
            suffix=".tmp",
        )
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise _output_error(target, exc) from exc
    except Exception as exc:
        raise OutputError(f"cannot write {target}: {exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(target.parent)
    return True


def atomic_write_text(path: str | os.PathLike[str], text: str) -> bool:
    """UTF-8 (``\\n`` newlines) version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (with parents) if needed and prove a file can be written in it."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise OutputError(
            f"cannot use {directory} as an output directory: it is a file; choose another --out"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(
            dir=directory, prefix=".symgrad-probe.", suffix=".tmp"
        )
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _output_error(directory, exc) from exc
    return directory


# ---------------------------------------------------------------------------- .npz writing


def _check_key(path: Path, key: object) -> str:
    if (
        not isinstance(key, str)
        or not key
        or "/" in key
        or "\\" in key
        or key.startswith("__")
    ):
        raise OutputError(
            f"cannot write {path}: array name {key!r} is invalid; use a non-empty name without "
            "'/' or '\\' that does not start with '__'"
        )
    return key


def _npz_bytes(
    path: Path,
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    reserved: dict[str, np.ndarray] | None = None,
) -> bytes:
    """Serialise ``arrays`` plus JSON ``meta`` to reproducible, pickle-free .npz bytes.

    ``reserved`` holds this module's own ``__``-prefixed arrays, which user names may not use.
    """
    try:
        meta_json = json.dumps(
            meta, sort_keys=True, allow_nan=False, ensure_ascii=False
        )
    except (TypeError, ValueError) as exc:
        raise OutputError(
            f"cannot write {path}: metadata is not plain JSON ({exc})"
        ) from exc
    members: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise OutputError(
                f"cannot write {path}: array {key!r} has dtype {array.dtype}; only numeric "
                "(bool/int/float) arrays are saved, never pickled objects"
            )
        members[_check_key(path, key)] = array
    members.update(reserved or {})
    members[_META_KEY] = np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(members):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                npformat.write_array(member, members[key], allow_pickle=False)
    return buffer.getvalue()


def save_npz_atomic(
    path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> bool:
    """Atomically write numeric ``arrays`` and JSON ``meta`` (key ``__meta__``) as an .npz.

    Returns False when the file already held exactly these bytes (left untouched).
    """
    target = Path(path)
    return atomic_write_bytes(target, _npz_bytes(target, arrays, meta))


# ---------------------------------------------------------------------------- safe reading


def _read_exact(stream: IO[bytes], nbytes: int, where: str) -> bytearray:
    """Read exactly ``nbytes`` in chunks, so memory grows only with data actually present."""
    buffer = bytearray()
    while len(buffer) < nbytes:
        chunk = stream.read(min(_CHUNK, nbytes - len(buffer)))
        if not chunk:
            raise FileFormatError(
                f"{where}: truncated: the header declares {nbytes} data bytes, only "
                f"{len(buffer)} are present; re-create or re-download the file"
            )
        buffer += chunk
    return buffer


def read_npy_stream(
    stream: IO[bytes], where: str, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Read one .npy array from ``stream``: numeric dtypes only, payload capped at ``max_bytes``.

    ``where`` names the source in error messages (e.g. ``data.npz[x_train]``).
    """
    try:
        version = npformat.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npformat.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = npformat.read_array_header_2_0(stream)
        else:
            raise FileFormatError(
                f"{where}: unsupported .npy format version {version[0]}.{version[1]}; "
                "save plain numeric arrays with numpy.save"
            )
    except FileFormatError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise FileFormatError(
            f"{where}: not a valid .npy array ({exc}); save it with numpy.save / numpy.savez"
        ) from exc
    if dtype.hasobject:
        raise FileFormatError(
            f"{where}: pickled data is not allowed (the array has object dtype); "
            "save a numeric array instead"
        )
    if dtype.kind not in _NUMERIC_KINDS or dtype.subdtype is not None:
        raise FileFormatError(
            f"{where}: dtype {dtype} is not supported; save a plain bool/int/float array"
        )
    if any(int(dim) < 0 for dim in shape):
        raise FileFormatError(
            f"{where}: the header declares a negative shape {tuple(shape)}"
        )
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes:
        raise FileFormatError(
            f"{where}: the header declares shape {tuple(shape)} ({nbytes} bytes), over the "
            f"{max_bytes}-byte limit; raise max_bytes (--max-bytes) if the file is genuine"
        )
    payload = _read_exact(stream, nbytes, where)
    array = np.frombuffer(payload, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran_order else "C")


def load_npy_safe(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Load a numeric .npy file without ever unpickling; see :func:`read_npy_stream`."""
    source = Path(path)
    try:
        with open(source, "rb") as stream:
            return read_npy_stream(stream, str(source), max_bytes=max_bytes)
    except FileNotFoundError as exc:
        raise FileFormatError(f"{source}: file not found; check the path") from exc
    except OSError as exc:
        raise FileFormatError(
            f"{source}: cannot read ({exc.strerror or exc}); check the path and permissions"
        ) from exc


def load_npz_safe(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load an .npz as ``(arrays, meta)`` without unpickling, refusing zip bombs and huge headers.

    ``meta`` is the JSON object stored under ``__meta__`` (empty when absent). The declared
    uncompressed sizes in the zip directory, and each array header, are checked against
    ``max_bytes`` before any member is decompressed.
    """
    source = Path(path)
    if not source.exists():
        raise FileFormatError(f"{source}: file not found; check the path")
    try:
        archive = zipfile.ZipFile(source)
    except OSError as exc:
        raise FileFormatError(
            f"{source}: cannot read ({exc.strerror or exc}); check the path and permissions"
        ) from exc
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise FileFormatError(
            f"{source}: not a valid .npz (zip) file ({exc}); it may be truncated: "
            "re-create it with numpy.savez or re-download it"
        ) from exc
    with archive:
        members = [
            info for info in archive.infolist() if info.filename.endswith(".npy")
        ]
        declared = sum(info.file_size for info in members)
        if declared > max_bytes:
            raise FileFormatError(
                f"{source}: the zip directory declares {declared} uncompressed bytes, over the "
                f"{max_bytes}-byte limit (possible zip bomb); raise max_bytes (--max-bytes) "
                "if the file is genuine"
            )
        arrays: dict[str, np.ndarray] = {}
        for info in members:
            key = info.filename[: -len(".npy")]
            where = f"{source}[{key}]"
            try:
                with archive.open(info) as stream:
                    arrays[key] = read_npy_stream(stream, where, max_bytes=max_bytes)
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                ValueError,
                RuntimeError,
                NotImplementedError,
            ) as exc:
                raise FileFormatError(
                    f"{where}: corrupt or unreadable member ({exc}); re-create or re-download the file"
                ) from exc
    meta: dict[str, Any] = {}
    if _META_KEY in arrays:
        raw = arrays.pop(_META_KEY)
        try:
            loaded = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FileFormatError(
                f"{source}[{_META_KEY}]: metadata is not valid JSON ({exc})"
            ) from exc
        if not isinstance(loaded, dict):
            raise FileFormatError(
                f"{source}[{_META_KEY}]: metadata must be a JSON object"
            )
        meta = loaded
    return arrays, meta


# ---------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A loaded training checkpoint."""

    params: dict[str, np.ndarray]
    spec_hash: str
    epoch: int
    history: list[float]
    extra: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike[str],
    params: dict[str, np.ndarray],
    *,
    spec_hash: str,
    epoch: int,
    history: list[float],
    extra: dict[str, Any],
) -> bool:
    """Atomically save parameters, the spec hash, epoch, loss history and JSON ``extra``.

    The history is stored as a float64 array, so it round-trips bit for bit (NaN included).
    """
    target = Path(path)
    history_array = np.asarray(history, dtype=np.float64).reshape(-1)
    meta = {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "spec_hash": spec_hash,
        "epoch": int(epoch),
        "extra": extra,
    }
    data = _npz_bytes(target, params, meta, reserved={_HISTORY_KEY: history_array})
    return atomic_write_bytes(target, data)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    spec_hash: str,
    shapes: dict[str, tuple[int, ...]],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Checkpoint:
    """Load a checkpoint, refusing one written for another spec hash or other parameter shapes."""
    source = Path(path)
    try:
        arrays, meta = load_npz_safe(source, max_bytes=max_bytes)
    except FileFormatError as exc:
        raise CheckpointError(f"cannot resume from {source}: {exc}") from exc
    if (
        meta.get("format") != _CHECKPOINT_FORMAT
        or meta.get("version") != _CHECKPOINT_VERSION
        or not isinstance(meta.get("epoch"), int)
    ):
        raise CheckpointError(
            f"cannot resume from {source}: not a symgrad checkpoint (version "
            f"{_CHECKPOINT_VERSION}); point --resume at a checkpoint.npz written by symgrad train"
        )
    if meta.get("spec_hash") != spec_hash:
        raise CheckpointError(
            f"cannot resume from {source}: it was written for spec hash {meta.get('spec_hash')}, "
            f"the current spec hashes to {spec_hash}; start a fresh run or use the matching spec"
        )
    history = arrays.pop(_HISTORY_KEY, np.zeros(0)).astype(np.float64)
    missing = sorted(set(shapes) - set(arrays))
    unexpected = sorted(set(arrays) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"cannot resume from {source}: parameter names differ from the spec "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'}); "
            "start a fresh run"
        )
    for name in sorted(shapes):
        expected = tuple(int(n) for n in shapes[name])
        if arrays[name].shape != expected:
            raise CheckpointError(
                f"cannot resume from {source}: parameter {name} has shape {arrays[name].shape} "
                f"in the checkpoint, the spec expects {expected}; start a fresh run"
            )
        if not np.all(np.isfinite(arrays[name])):
            raise CheckpointError(
                f"cannot resume from {source}: parameter {name} contains NaN or inf; "
                "resume from an earlier checkpoint or start a fresh run"
            )
    return Checkpoint(
        params=arrays,
        spec_hash=spec_hash,
        epoch=int(meta["epoch"]),
        history=[float(v) for v in history],
        extra=dict(meta.get("extra") or {}),
    )
