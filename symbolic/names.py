"""Which names a spec may use: they become Python identifiers and file names.

A name must be an ASCII Python identifier (so no look-alike letters), not a keyword, not a
builtin, not a module the generated code imports, and not a name the generated code uses itself.
"""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

# Names the generated module and its templates define or import; a spec may not shadow them.
RESERVED = frozenset({
    "np", "numpy", "numba", "math", "njit", "prange", "literal_unroll", "Params", "params",
    "grads", "X", "Y", "n", "loss", "loss_and_grad", "forward", "predict", "accuracy", "fit",
    "init_params", "history", "state", "step", "epoch", "lr", "rng", "seed", "batch", "idx",
    "dtype", "callback", "optimizer", "hyper", "inv_n", "sum", "abs", "min", "max",
})

MAX_NAME_LENGTH = 40


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
