"""Invoke task modules, one per area; ``program.collection`` gathers them (``tasks.py``, ``systemvm-tasks``).

Each module defines plain ``@task`` functions that parse options and call the library; wrap the body in
:func:`user_errors` so bad input ends with one line and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from systemvm.errors import UserError


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
