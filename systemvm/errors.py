"""Errors a user can act on: one line that names the problem and the fix."""


class UserError(Exception):
    """Bad input or a missing prerequisite. The message is one line: problem, then fix.

    Command-line front ends print ``error: <message>`` and exit with status 2; no traceback.
    """

    exit_code = 2
