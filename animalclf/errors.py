"""Errors that are the user's to fix.

Entry points catch :class:`UserError` and print its one-line message (no traceback) with a
non-zero exit; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the input or environment; the message names the problem and the fix."""

    exit_code = 2


class InvalidImage(UserError):
    """An uploaded or listed file that is not a usable image."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
