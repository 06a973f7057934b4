"""Errors a user can act on: one line that names the problem and the fix, and the exit status it ends with.

One rule for every command of the project (the tasks, ``systemvm``, ``systemvm-seed``, the suite):

- **2**: the user's input cannot be used as given (an option, a path, a file of the wrong kind or damaged,
  a missing build, a download that does not match its checksum): :class:`UserError`. The fix is other input.
- **1**: the work itself failed: a check found a defect in what it was asked to check (``systemvm vhd
  check``, the appliance suite, a build whose image lacks a package): :class:`DefectFound`; or a tool we run
  failed (diskimage-builder, mmdebstrap, qemu-img, bzip2, apt-cacher-ng): :class:`ToolFailed`.
- 130: interrupted (Ctrl-C, SIGTERM), everything the run made removed.
"""

from __future__ import annotations

import configparser
import re

EXIT_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input or a missing prerequisite. The message is one line: problem, then fix.

    Command-line front ends print ``error: <message>`` and exit with :attr:`exit_code`; no traceback.
    """

    exit_code = EXIT_INPUT


class DefectFound(UserError):
    """A check found a defect in what it was asked to check: exit status 1."""

    exit_code = EXIT_FAILED


class ToolFailed(UserError):
    """A tool the project runs failed (its first error line quoted, its log named): exit status 1."""

    exit_code = EXIT_FAILED


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


def tool_failed(tool: str, rc: int, log_text: str, log_path: object) -> ToolFailed:
    """One line for a failed tool: the first error line of its log, then where the whole log is."""
    cause = first_error_line(log_text)
    if cause is None:
        tail = [line for line in log_text.splitlines() if line.strip()]
        cause = _STAMP.sub("", tail[-1]) if tail else "no output"
    return ToolFailed(f"{tool} failed (exit {rc}): {cause.strip()}; full log: {log_path}")


def ini_problem(exc: configparser.Error) -> str:
    """Where an ini file is wrong, in words: ``line 3 is not 'key = value' or '[section]': 'this is bad'``
    (configparser's own messages span lines and name no line for some errors)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section] header: {_shown(exc.line)}"
    errors = getattr(exc, "errors", None)
    if isinstance(exc, configparser.ParsingError) and errors:
        line, text = errors[0]
        return f"line {line} is not 'key = value' or '[section]': {_shown(text)}"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno} opens section [{exc.section}] a second time"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno} sets '{exc.option}' a second time in [{exc.section}]"
    return exc.message.splitlines()[0]


def _shown(text: object) -> str:
    """A quoted line of a file, as configparser gives it (itself quoted, or not), at most 60 characters."""
    line = str(text).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "'\"":
        line = line[1:-1]
    line = line.removesuffix("\\n").strip()
    line = "".join(c if c.isprintable() else "?" for c in line)
    return f"'{line[:60]}{'...' if len(line) > 60 else ''}'"
