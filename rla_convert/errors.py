"""Errors the user can fix (the CLI prints them as one line and exits with status 2), and how any error
is told in one line."""
from __future__ import annotations


def describe(err: BaseException, limit: int | None = None) -> str:
    """``Type: first line of the message`` (the line cut to ``limit`` characters), for one-line reports."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


class UserError(Exception):
    """Bad input: the message says what was wrong and what is accepted."""


class NotBuiltError(UserError):
    """A command or option that the toolkit names but does not implement yet."""
