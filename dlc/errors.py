"""Errors are values with a position; only the CLI prints them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pos:
    line: int  # 1-based
    col: int  # 1-based
    end_col: int | None = None  # exclusive; None marks a single caret


class DlcError(Exception):
    """A user-facing error. `pos` is None for errors that are not about one place in a spec."""

    def __init__(self, message: str, pos: Pos | None = None, file: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.file = file
        self.source = source

    def located(self, file: str, source: str) -> "DlcError":
        """Attach the file name and text, keeping the position."""
        self.file, self.source = file, source
        return self

    def __str__(self) -> str:
        return format_error(self)


class Failure(DlcError):
    """A command's verdict that is not about the input (a failed gradient check): its own exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class ShapeError(Exception):
    """Raised by a layer's shape rule; the compiler turns it into a located DlcError naming the layer.
    `attr` names the option (or size) whose value is out of range, so the caret goes under that value."""

    def __init__(self, message: str, attr: str | None = None):
        super().__init__(message)
        self.attr = attr


def format_error(err: DlcError) -> str:
    if err.file is None:
        return f"error: {err.message}"
    if err.pos is None:
        return f"{err.file}: {err.message}"
    head = f"{err.file}:{err.pos.line}:{err.pos.col}: {err.message}"
    lines = (err.source or "").splitlines()
    if not 1 <= err.pos.line <= len(lines):
        return head
    text = lines[err.pos.line - 1].expandtabs(1)
    width = max(1, (err.pos.end_col or err.pos.col + 1) - err.pos.col)
    caret = " " * (err.pos.col - 1) + "^" * width
    return f"{head}\n    {text}\n    {caret}"
