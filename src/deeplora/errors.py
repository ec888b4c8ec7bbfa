"""The project's error for user mistakes.

:class:`UserError` marks a problem with what the user gave (an argument, a path, a file's
content): the command line prints its message as one ``error:`` line and exits with status 2.
It is a :class:`ValueError`, so Python callers can catch it as one.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message says what and how to fix it."""
