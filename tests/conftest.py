"""Shared pytest configuration.

* ``--update-golden`` rewrites the golden files (generated modules and their check reports)
  instead of comparing against them.
* Numba's cache goes to a fresh temporary directory per test session (one per xdist worker),
  unless NUMBA_CACHE_DIR is already set: generated modules compiled in one test are reused by
  the others and by subprocesses, and no run can pick up another run's stale cache.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

_SESSION_CACHE: list[str] = []


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files (generated/*.py, *.check.json) instead of "
                          "comparing against them")


def pytest_configure(config):
    if "NUMBA_CACHE_DIR" not in os.environ:
        path = tempfile.mkdtemp(prefix="symgrad-numba-cache-")
        _SESSION_CACHE.append(path)
        os.environ["NUMBA_CACHE_DIR"] = path
        numba_config = sys.modules.get("numba.core.config")
        if numba_config is not None:  # numba already imported: its config read the old value
            numba_config.CACHE_DIR = path


def pytest_unconfigure(config):
    while _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE.pop(), ignore_errors=True)


@pytest.fixture(scope="session")
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))


# ------------------------------------------------------------------ generated modules (codegen)

from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"
EXAMPLE_SPECS = sorted((ROOT / "examples").glob("*.toml")) + [ROOT / "symgrad/specs/digits_mlp.toml"]


@pytest.fixture(scope="session")
def derivation():
    """derivation(name) -> the Derivation of a bundled example (derived once per session)."""
    from symbolic import derive, load_spec

    cache: dict = {}
    by_name = {p.stem: p for p in EXAMPLE_SPECS}

    def get(name: str):
        if name not in cache:
            cache[name] = derive(load_spec(by_name[name]))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def generated_module():
    """generated_module(name) -> the committed generated/<name>.py, imported once per session."""
    import codegen

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = codegen.load_module(GENERATED / f"{name}.py")
        return cache[name]

    return get
