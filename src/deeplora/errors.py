"""The project's errors for user mistakes.

:class:`UserError` marks a problem with what the user gave (an argument, a path, a file's
content): the command line prints its message as one ``error:`` line and exits with status 2.
It is a :class:`ValueError`, so Python callers can catch it as one; the two below are also the
built-in error a Python caller would expect. Any other exception is a bug and keeps its
traceback (docs/RELIABILITY.md).
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message says what and how to fix it."""


class MissingFileError(UserError, FileNotFoundError):
    """A path the user gave does not exist."""


class UnknownIdError(UserError, KeyError):
    """A row or column ID the model was not fitted on."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
