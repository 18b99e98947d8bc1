"""User-facing errors.

Anything a user can cause (bad flag, missing data, corrupt file) raises :class:`UserError`.
The CLI prints its message as one line and exits with code 2, without a traceback.
"""


class UserError(Exception):
    """An error caused by the user's input; reported as one line, exit code 2."""

    exit_code = 2
