"""Errors and warnings raised for bad specs: each names the file, the field and the fix."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec that cannot be used, with where it is wrong and how to fix it.

    ``str(err)`` is one line: ``FILE:LINE: FIELD: what is wrong; how to fix it``.
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
        return text

    def located(self, *, source: str | None = None, field: str | None = None,
                line: int | None = None) -> "SpecError":
        """The same error with missing location parts filled in."""
        return SpecError(self.message, source=self.source or source, field=self.field or field,
                         line=self.line if self.line is not None else line,
                         column=self.column, hint=self.hint)


class SpecWarning(UserWarning):
    """Something in a spec that works but is probably not what the user meant."""
