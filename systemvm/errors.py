"""Errors a user can act on: one line that names the problem and the fix."""

from __future__ import annotations

import re


class UserError(Exception):
    """Bad input or a missing prerequisite. The message is one line: problem, then fix.

    Command-line front ends print ``error: <message>`` and exit with status 2; no traceback.
    """

    exit_code = 2


# What a log line of diskimage-builder, mmdebstrap, apt or qemu-img looks like once its time stamp is cut.
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?\s*(?:\|\s*)?")
_ERROR = re.compile(r"^(?:E: |ERROR\b|Error: |error: |FATAL\b|fatal: )|\bERROR\b|qemu-img: ")
_TRACEBACK = "Traceback (most recent call last):"


def first_error_line(text: str) -> str | None:
    """The first line of a tool's log that says what went wrong, without its time stamp.

    An ``E:`` line (apt, mmdebstrap, debootstrap), an ``ERROR`` line (diskimage-builder), a ``qemu-img:``
    line, or, for a Python traceback, its last line (the exception). The last line of such a log is
    most often a clean-up message (diskimage-builder's "State already cleaned"), which names no cause.
    """
    lines = [_STAMP.sub("", line).rstrip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        if line.startswith(_TRACEBACK):
            for after in lines[index + 1 :]:
                if after and not after.startswith((" ", "\t")):
                    return after
            return None
        if _ERROR.search(line) and not line.startswith("+"):  # "+ cmd" is a shell trace, not an error
            return line
    return None


def tool_failed(tool: str, rc: int, log_text: str, log_path: object) -> UserError:
    """One line for a failed tool: the first error line of its log, then where the whole log is."""
    cause = first_error_line(log_text)
    if cause is None:
        tail = [line for line in log_text.splitlines() if line.strip()]
        cause = _STAMP.sub("", tail[-1]) if tail else "no output"
    return UserError(f"{tool} failed (exit {rc}): {cause.strip()}; full log: {log_path}")
