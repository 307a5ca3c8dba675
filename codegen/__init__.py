"""symgrad's code half: derivations → standalone, verified Numba training modules.

Entry points::

    generate(spec_or_derivation, out_dir="generated", *, verify=True) -> Path
    render_module(spec_or_derivation) -> str
    check(spec_or_derivation) -> CheckReport        # render into a temp dir + verify, no install
    load_module(path)                                # import a generated module from its file
                                                     # (unreadable Numba cache entries cleared)
    equation_numbers(derivation) -> {step name: k}   # the (k) tags shared with the LaTeX document
"""

from .pipeline import (
    CacheWarning, VerificationError, as_derivation, check, check_text, generate, load_module,
    recover_numba_cache, render_module, verify_module, write_atomic,
)
from .lower import equation_numbers
from .printers import CodegenError, FormulaPrinter, NumbaPrinter

__all__ = [
    "CacheWarning", "CodegenError", "FormulaPrinter", "NumbaPrinter", "VerificationError",
    "as_derivation", "check", "check_text", "equation_numbers", "generate", "load_module",
    "recover_numba_cache", "render_module", "verify_module", "write_atomic",
]
