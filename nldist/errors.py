"""Errors raised for bad input.

Every error nldist raises for a user mistake is an :class:`NldistError`: a one-line
message that says what is wrong and how to fix it. The CLI prints it as
``error: <message>`` and exits with status 2.
"""

from __future__ import annotations


class NldistError(ValueError):
    """A user-facing error with a one-line message naming the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class BadBlock(Exception):
    """A persisted dual block failed its check (the reason is the message); it is rebuilt."""
