"""Which exceptions are a user's problem (one line, no traceback) and which are bugs."""

from __future__ import annotations

import warnings


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is written for the user."""
    from symbolic import DomainError, SpecError
    from symbolic.graph import GraphError
    from symbolic.latex import DocumentError

    from .data import DataError
    from .fileio import CheckpointError, FileFormatError, OutputError

    found: list[type[BaseException]] = [SpecError, DomainError, DataError, OutputError,
                                         CheckpointError, FileFormatError, DocumentError,
                                         GraphError]
    from codegen import CodegenError, VerificationError

    found += [CodegenError, VerificationError]
    return tuple(found)


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception reaching the command line.

    The message is kept on one line: line breaks and other non-printable characters (from a
    file name, say) are shown escaped.
    """
    from symbolic.errors import one_line

    if isinstance(exc, expected_errors()):
        return one_line(str(exc)), 2
    return one_line(f"internal error ({type(exc).__name__}: {exc}); please report it with the "
                    f"spec, and rerun with --debug for the traceback"), 3


def show_warnings() -> None:
    """Print SpecWarnings as single lines on stderr."""
    from symbolic import SpecWarning

    def _show(message, category, filename, lineno, file=None, line=None):
        import sys

        print(f"symgrad: warning: {message}", file=sys.stderr)

    warnings.showwarning = _show
    warnings.simplefilter("always", SpecWarning)
