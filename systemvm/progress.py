"""Progress a person can follow: one line per phase with elapsed time; details go to a log file."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Print ``==> name`` on entry and ``    name: done in 12.3 s`` (or ``FAILED after``) on exit."""
    start = time.monotonic()
    say(f"==> {name}")
    try:
        yield
    except BaseException:
        say(f"    {name}: FAILED after {time.monotonic() - start:.1f} s")
        raise
    say(f"    {name}: done in {time.monotonic() - start:.1f} s")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
