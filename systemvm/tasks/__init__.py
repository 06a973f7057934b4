"""Invoke task modules, one per area; ``program.collection`` gathers them (``tasks.py``, ``systemvm-tasks``).

Each module defines plain ``@task`` functions that parse options and call the library; wrap the body in
:func:`user_errors` so bad input ends with one line and the exit status of :mod:`systemvm.errors`. Give
a number option a string default (``"5"``), or invoke converts it itself and a bad value ends in a
traceback; read it with :func:`whole_number`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from systemvm.errors import UserError


def whole_number(value: object, option: str, minimum: int = 1) -> int:
    """An option's value as a whole number of at least ``minimum`` (invoke hands it over as typed)."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < minimum:
        raise UserError(f"{option} {value} is not a whole number of at least {minimum}: pass e.g. {option} 2")
    return int(text)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted; everything this run created was removed", file=sys.stderr)
        raise SystemExit(130) from None
