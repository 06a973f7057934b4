"""The bench's rows and how they are printed."""

from __future__ import annotations

from collections.abc import Callable

from systemvm.progress import say

Rows = list[tuple[str, str]]


def run_section(name: str, fn: Callable[[], Rows]) -> Rows:
    say(f"==> bench: {name}")
    try:
        return fn()
    except Exception as exc:  # a failing section is reported, the others still run
        return [(f"{name}", f"FAILED: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")]


def print_table(rows: Rows) -> None:
    width = max(len(k) for k, _ in rows) if rows else 10
    print(f"\n{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 20}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
