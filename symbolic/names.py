"""Which names a spec may use: they become Python identifiers and file names.

A name must be an ASCII Python identifier (so no look-alike letters), not a keyword, not a
builtin, not a module the generated code imports, and not a name the generated code uses itself.
A model name is also a file and module name: :func:`module_name_problem` further keeps it off the
standard library's and symgrad's dependencies' module names.
"""

from __future__ import annotations

import builtins
import keyword
import re
import sys
import unicodedata

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

# Names the generated module and its templates define or import; a spec may not shadow them.
RESERVED = frozenset({
    "np", "numpy", "numba", "math", "collections", "njit", "prange", "literal_unroll", "Params",
    "params", "grads", "X", "Y", "n", "loss", "loss_and_grad", "forward", "predict", "accuracy",
    "fit", "init_params", "history", "state", "step", "epoch", "lr", "rng", "seed", "batch", "idx",
    "dtype", "callback", "optimizer", "hyper", "inv_n", "sum", "abs", "min", "max",
})

MAX_NAME_LENGTH = 40

# Top-level packages symgrad runs with; a generated module is imported under its model name, so
# that name must not be one of these (nor a standard-library module): it would replace the real
# module in sys.modules.
DEPENDENCIES = frozenset({
    "numpy", "numba", "llvmlite", "scipy", "sympy", "mpmath", "jinja2", "markupsafe", "sklearn",
    "matplotlib", "tqdm", "symbolic", "codegen", "symgrad", "pytest", "hypothesis", "lark",
    "torch", "jax",
})


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as a spec name, or None when it can."""
    if not isinstance(name, str) or not name:
        return "a name must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"name is longer than {MAX_NAME_LENGTH} characters"
    if not name.isascii():
        bad = next(c for c in name if not c.isascii())
        folded = unicodedata.normalize("NFKC", name)
        extra = f" (it looks like {folded!r})" if folded != name and folded.isascii() else ""
        return (f"name {name!r} contains the non-ASCII character {bad!r} "
                f"(U+{ord(bad):04X}){extra}; use ASCII letters, digits and _")
    if not _IDENTIFIER.match(name):
        return f"{name!r} is not an identifier: start with a letter, then letters, digits or _"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"{name!r} is a Python keyword"
    if name in RESERVED:
        return f"{name!r} is used by the generated code"
    if hasattr(builtins, name):
        return f"{name!r} is a Python builtin"
    return None


def module_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a generated module's name (its file stem), or None when it can.

    On top of :func:`name_problem`: not a standard-library module and not a package symgrad
    depends on, because ``codegen.load_module`` imports ``<name>.py`` as module ``name``.
    """
    problem = name_problem(name)
    if problem is not None:
        return problem
    if name in sys.stdlib_module_names or name in DEPENDENCIES:
        kind = "standard-library" if name in sys.stdlib_module_names else "dependency"
        return (f"{name!r} is the name of a {kind} module; the generated {name}.py, imported "
                f"as `{name}`, would shadow it")
    return None
