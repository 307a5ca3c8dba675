"""Errors and warnings raised for bad specs: each names the file, the field and the fix."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with every non-printable character (``\\n``, ``\\r``, U+2028, U+202E, ...) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class SpecError(ValueError):
    """A spec that cannot be used, with where it is wrong and how to fix it.

    ``str(err)`` is one line: ``FILE:LINE: FIELD: what is wrong; how to fix it``. Characters
    that would break or disguise that line (line breaks, other control characters, bidi
    controls), wherever they come from (a path, a key, a quoted value), are shown escaped.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 line: int | None = None, column: int | None = None, hint: str | None = None):
        self.message = message
        self.source = source
        self.field = field
        self.line = line
        self.column = column
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.source or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.field:
            field = self.field
            if self.column is not None:
                field += f" (column {self.column})"
            parts.append(field)
        text = ": ".join(parts) + ": " + self.message
        if self.hint:
            text += f"; {self.hint}"
        return one_line(text)

    def located(self, *, source: str | None = None, field: str | None = None,
                line: int | None = None) -> "SpecError":
        """The same error with missing location parts filled in."""
        return SpecError(self.message, source=self.source or source, field=self.field or field,
                         line=self.line if self.line is not None else line,
                         column=self.column, hint=self.hint)


class SpecWarning(UserWarning):
    """Something in a spec that works but is probably not what the user meant."""
