"""Atomic writes, pickle-free .npz reading and checkpoint checks (RELIABILITY_CASES F.35, F.36, F.39)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat
import pytest

from symgrad import fileio
from symgrad.fileio import (
    CheckpointError,
    FileFormatError,
    OutputError,
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
    load_checkpoint,
    load_npy_safe,
    load_npz_safe,
    save_checkpoint,
    save_npz_atomic,
)

REPO = Path(__file__).resolve().parents[1]


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def raise_oserror(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_creates_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    assert atomic_write_text(target, "one\n") is True
    assert atomic_write_text(target, "two\n") is True
    assert target.read_text() == "two\n"
    assert temp_files(tmp_path) == []


def test_unchanged_content_keeps_mtime(tmp_path):
    target = tmp_path / "module.py"
    atomic_write_bytes(target, b"same")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    assert atomic_write_bytes(target, b"same") is False
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert atomic_write_bytes(target, b"different") is True
    assert target.stat().st_mtime_ns != 1_000_000_000


def test_new_file_gets_umask_permissions_and_existing_mode_is_kept(tmp_path):
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    assert fresh.stat().st_mode & 0o777 == fileio._NEW_FILE_MODE
    fresh.chmod(0o640)
    atomic_write_text(fresh, "y")
    assert fresh.stat().st_mode & 0o777 == 0o640


@pytest.mark.reliability("F35")
def test_failing_replace_keeps_previous_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "params.npz"
    target.write_bytes(b"previous")
    monkeypatch.setattr(os, "replace", raise_oserror(errno.EIO))
    with pytest.raises(OutputError, match=f"cannot write {target}: Input/output error"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"previous"
    assert temp_files(tmp_path) == []


@pytest.mark.reliability("F36")
def test_enospc_gives_clear_message_and_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "runs" / "x" / "params.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"previous")
    monkeypatch.setattr(os, "fsync", raise_oserror(errno.ENOSPC))
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(target, b"new")
    assert str(info.value) == (
        f"cannot write {target}: No space left on device; free space or choose another --out"
    )
    assert target.read_bytes() == b"previous"
    assert temp_files(target.parent) == []


@pytest.mark.reliability("F36")
def test_unwritable_directory_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkstemp", raise_oserror(errno.EACCES))
    with pytest.raises(
        OutputError, match="Permission denied; make the directory writable"
    ):
        atomic_write_text(tmp_path / "a.txt", "x")


@pytest.mark.reliability("F35")
def test_non_oserror_inside_write_becomes_output_error(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"previous")
    with pytest.raises(OutputError, match=str(target)):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"previous"
    assert temp_files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
@pytest.mark.reliability("F36")
def test_read_only_directory_real_permissions(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("old")
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="make the directory writable"):
            atomic_write_text(locked / "keep.txt", "new")
        with pytest.raises(OutputError, match=str(locked)):
            ensure_writable_dir(locked)
        assert (locked / "keep.txt").read_text() == "old"
    finally:
        locked.chmod(0o700)


def test_stale_temp_from_dead_writer_is_removed_but_live_ones_kept(tmp_path):
    target = tmp_path / "ckpt.npz"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".ckpt.npz.{dead.stdout.strip()}.abc123.tmp"
    live = tmp_path / f".ckpt.npz.{os.getpid()}.zzz.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    atomic_write_bytes(target, b"data")
    assert not stale.exists()
    assert live.exists()


# ---------------------------------------------------------------------------- directories


def test_ensure_writable_dir_creates_parents(tmp_path):
    made = ensure_writable_dir(tmp_path / "a" / "b" / "c")
    assert made.is_dir()
    assert temp_files(made) == []


def test_ensure_writable_dir_parent_is_a_file(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a directory")
    with pytest.raises(
        OutputError, match=rf"cannot write {blocker}/x: Not a directory; a parent"
    ):
        ensure_writable_dir(blocker / "x")


def test_ensure_writable_dir_path_is_a_file(tmp_path):
    existing = tmp_path / "out"
    existing.write_text("")
    with pytest.raises(
        OutputError, match=f"{existing} as an output directory: it is a file"
    ):
        ensure_writable_dir(existing)


@pytest.mark.parametrize(
    ("code", "fix"),
    [(errno.EACCES, "make the directory writable"), (errno.ENOSPC, "free space")],
)
def test_ensure_writable_dir_simulated_failures(tmp_path, monkeypatch, code, fix):
    monkeypatch.setattr(tempfile, "mkstemp", raise_oserror(code))
    with pytest.raises(
        OutputError, match=f"cannot write {tmp_path}: {os.strerror(code)}; {fix}"
    ):
        ensure_writable_dir(tmp_path)


# ---------------------------------------------------------------------------- .npz


def test_npz_round_trip_meta_and_reproducible_bytes(tmp_path):
    target = tmp_path / "arrays.npz"
    arrays = {
        "W1": np.arange(6.0).reshape(2, 3),
        "mask": np.array([True, False]),
        "n": np.int32(4),
    }
    meta = {"spec": "mlp", "lr": 0.1, "sizes": [1, 2]}
    assert save_npz_atomic(target, arrays, meta) is True
    loaded, loaded_meta = load_npz_safe(target)
    assert loaded_meta == meta
    assert sorted(loaded) == ["W1", "mask", "n"]
    np.testing.assert_array_equal(loaded["W1"], arrays["W1"])
    assert loaded["mask"].dtype == np.bool_
    assert (
        save_npz_atomic(target, arrays, meta) is False
    )  # identical bytes: file untouched
    with np.load(target, allow_pickle=False) as plain:  # still a standard .npz
        assert plain["__meta__"].dtype == np.uint8


def test_npz_without_meta_loads_with_empty_meta(tmp_path):
    target = tmp_path / "plain.npz"
    np.savez(target, a=np.ones(3))
    arrays, meta = load_npz_safe(target)
    assert meta == {}
    np.testing.assert_array_equal(arrays["a"], np.ones(3))


@pytest.mark.reliability("F35")
def test_save_refuses_object_arrays_and_keeps_previous_file(tmp_path):
    target = tmp_path / "a.npz"
    save_npz_atomic(target, {"a": np.ones(2)}, {})
    before = target.read_bytes()
    with pytest.raises(OutputError, match="array 'bad' has dtype object"):
        save_npz_atomic(target, {"bad": np.array([{}], dtype=object)}, {})
    with pytest.raises(OutputError, match="metadata is not plain JSON"):
        save_npz_atomic(target, {"a": np.ones(2)}, {"lr": float("nan")})
    with pytest.raises(OutputError, match="array name '__meta__' is invalid"):
        save_npz_atomic(target, {"__meta__": np.ones(2)}, {})
    assert target.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_load_npz_missing_file(tmp_path):
    with pytest.raises(FileFormatError, match=rf"{tmp_path}/nope.npz: file not found"):
        load_npz_safe(tmp_path / "nope.npz")


@pytest.mark.reliability("E29")
def test_load_npz_truncated_and_non_zip(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.arange(1000.0))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:500])
    text = tmp_path / "text.npz"
    text.write_text("hello, not a zip\n")
    for path in (truncated, text):
        with pytest.raises(
            FileFormatError, match=rf"{path}: not a valid .npz \(zip\) file"
        ):
            load_npz_safe(path)


@pytest.mark.reliability("E28")
def test_load_npz_refuses_object_member(tmp_path):
    target = tmp_path / "obj.npz"
    np.savez(target, x=np.array([1, "a"], dtype=object))
    with pytest.raises(
        FileFormatError, match=r"obj.npz\[x\]: pickled data is not allowed"
    ):
        load_npz_safe(target)


def write_raw_member(
    path: Path, name: str, header: dict, payload: bytes, compress: int
) -> None:
    stream = io.BytesIO()
    npformat.write_array_header_1_0(stream, header)
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr(name, stream.getvalue() + payload)


@pytest.mark.reliability("E31")
def test_load_npz_refuses_absurd_header_shape_before_allocating(tmp_path):
    target = tmp_path / "huge.npz"
    header = {"descr": "<f8", "fortran_order": False, "shape": (1_000_000, 1_000_000)}
    write_raw_member(target, "x.npy", header, b"\0" * 64, zipfile.ZIP_STORED)
    with pytest.raises(
        FileFormatError,
        match=r"huge.npz\[x\]: the header declares shape \(1000000, 1000000\)",
    ):
        load_npz_safe(target)


@pytest.mark.reliability("E31")
def test_load_npz_refuses_zip_bomb(tmp_path):
    target = tmp_path / "bomb.npz"
    header = {"descr": "|u1", "fortran_order": False, "shape": (20_000_000,)}
    write_raw_member(target, "x.npy", header, bytes(20_000_000), zipfile.ZIP_DEFLATED)
    assert target.stat().st_size < 100_000
    with pytest.raises(
        FileFormatError,
        match=r"bomb.npz: the zip directory declares \d+ uncompressed bytes.*zip bomb",
    ):
        load_npz_safe(target, max_bytes=1_000_000)


@pytest.mark.reliability("E31")
def test_load_npz_refuses_lying_zip_directory(tmp_path):
    target = tmp_path / "liar.npz"
    np.savez(target, x=np.ones(4))
    data = bytearray(target.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = (0xFFFFFFF0).to_bytes(4, "little")
    target.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="possible zip bomb"):
        load_npz_safe(target, max_bytes=10**9)


def test_load_npz_truncated_member_data(tmp_path):
    target = tmp_path / "short.npz"
    header = {"descr": "<f8", "fortran_order": False, "shape": (100,)}
    write_raw_member(target, "x.npy", header, b"\0" * 80, zipfile.ZIP_STORED)
    with pytest.raises(
        FileFormatError,
        match=r"short.npz\[x\]: truncated: the header declares 800 data bytes, only 80",
    ):
        load_npz_safe(target)


def test_load_npy_safe_missing_and_directory(tmp_path):
    with pytest.raises(FileFormatError, match=rf"{tmp_path}/no.npy: file not found"):
        load_npy_safe(tmp_path / "no.npy")
    with pytest.raises(
        FileFormatError, match=rf"{tmp_path}: cannot read \(Is a directory\)"
    ):
        load_npy_safe(tmp_path)
    with pytest.raises(
        FileFormatError, match=rf"{tmp_path}: cannot read \(Is a directory\)"
    ):
        load_npz_safe(tmp_path)


@pytest.mark.reliability("E29")
def test_load_npy_safe_text_file_and_fortran_order(tmp_path):
    text = tmp_path / "data.npy"
    text.write_text("1,2,3\n")
    with pytest.raises(FileFormatError, match=rf"{text}: not a valid .npy array"):
        load_npy_safe(text)
    fortran = tmp_path / "f.npy"
    array = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.save(fortran, array)
    np.testing.assert_array_equal(load_npy_safe(fortran), array)


# ---------------------------------------------------------------------------- checkpoints

SHAPES = {"W1": (3, 2), "b1": (3,)}


def make_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((3, 2)), "b1": rng.standard_normal(3)}


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    target = tmp_path / "checkpoint.npz"
    params = make_params()
    history = [2.302585092994046, 1.0 / 3.0, 1e-300]
    save_checkpoint(
        target, params, spec_hash="abc123", epoch=7, history=history, extra={"seed": 1}
    )
    loaded = load_checkpoint(target, spec_hash="abc123", shapes=SHAPES)
    assert loaded.epoch == 7
    assert loaded.history == history
    assert loaded.extra == {"seed": 1}
    for name, value in params.items():
        assert loaded.params[name].tobytes() == value.tobytes()
    assert (
        save_checkpoint(
            target,
            params,
            spec_hash="abc123",
            epoch=7,
            history=history,
            extra={"seed": 1},
        )
        is False
    )


@pytest.mark.reliability("F39")
def test_checkpoint_for_another_spec_is_refused(tmp_path):
    target = tmp_path / "checkpoint.npz"
    save_checkpoint(
        target, make_params(), spec_hash="aaaa", epoch=1, history=[1.0], extra={}
    )
    with pytest.raises(
        CheckpointError,
        match=f"{target}.*spec hash aaaa, the current spec hashes to bbbb",
    ):
        load_checkpoint(target, spec_hash="bbbb", shapes=SHAPES)


@pytest.mark.reliability("F39")
def test_checkpoint_with_other_shapes_is_refused(tmp_path):
    target = tmp_path / "checkpoint.npz"
    save_checkpoint(target, make_params(), spec_hash="h", epoch=1, history=[], extra={})
    with pytest.raises(
        CheckpointError,
        match=r"parameter W1 has shape \(3, 2\) in the checkpoint, the spec expects \(4, 2\)",
    ):
        load_checkpoint(target, spec_hash="h", shapes={"W1": (4, 2), "b1": (3,)})
    with pytest.raises(CheckpointError, match="missing: W2; unexpected: none"):
        load_checkpoint(target, spec_hash="h", shapes={**SHAPES, "W2": (1, 1)})


def test_checkpoint_with_nan_parameters_or_wrong_format_is_refused(tmp_path):
    target = tmp_path / "checkpoint.npz"
    params = make_params()
    params["b1"][1] = np.nan
    save_checkpoint(target, params, spec_hash="h", epoch=1, history=[np.nan], extra={})
    with pytest.raises(CheckpointError, match="parameter b1 contains NaN or inf"):
        load_checkpoint(target, spec_hash="h", shapes=SHAPES)
    other = tmp_path / "other.npz"
    np.savez(other, W1=np.ones((3, 2)))
    with pytest.raises(CheckpointError, match=f"{other}: not a symgrad checkpoint"):
        load_checkpoint(other, spec_hash="h", shapes=SHAPES)


def test_corrupt_checkpoint_is_refused_with_path(tmp_path):
    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(
        CheckpointError, match=f"cannot resume from {target}: .*not a valid .npz"
    ):
        load_checkpoint(target, spec_hash="h", shapes=SHAPES)


@pytest.mark.reliability("F35")
def test_child_killed_during_checkpoint_save_leaves_previous_checkpoint(tmp_path):
    target = tmp_path / "checkpoint.npz"
    save_checkpoint(
        target, make_params(0), spec_hash="h", epoch=1, history=[1.0], extra={}
    )
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from symgrad import fileio
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        fileio.save_checkpoint({str(target)!r}, {{"W1": np.zeros((3, 2)), "b1": np.zeros(3)}},
                               spec_hash="h", epoch=2, history=[1.0, 0.5], extra={{}})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert child.returncode == -9, child.stderr.decode()
    assert len(temp_files(tmp_path)) == 1  # the killed writer's partial file
    loaded = load_checkpoint(target, spec_hash="h", shapes=SHAPES)
    assert loaded.epoch == 1
    save_checkpoint(
        target, make_params(1), spec_hash="h", epoch=3, history=[1.0], extra={}
    )
    assert temp_files(tmp_path) == []  # the next save cleans up after the dead writer
    assert load_checkpoint(target, spec_hash="h", shapes=SHAPES).epoch == 3
