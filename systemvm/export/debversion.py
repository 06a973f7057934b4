"""Debian version ordering (Debian Policy 5.6.12), as ``dpkg --compare-versions`` decides it."""

from __future__ import annotations

import re


def _order(char: str) -> int:
    """A character's weight in a non-digit run: ``~`` first, then the end (and digits), letters, the rest."""
    if char == "" or char.isdigit():
        return 0
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternating non-digit runs (by weight) and digit runs (by value)."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            weight_a, weight_b = _order(a[i : i + 1]), _order(b[j : j + 1])
            if weight_a != weight_b:
                return -1 if weight_a < weight_b else 1
            i, j = i + 1, j + 1
        digits_a = re.match(r"\d*", a[i:]).group()  # type: ignore[union-attr]
        digits_b = re.match(r"\d*", b[j:]).group()  # type: ignore[union-attr]
        if int(digits_a or 0) != int(digits_b or 0):
            return -1 if int(digits_a or 0) < int(digits_b or 0) else 1
        i, j = i + len(digits_a), j + len(digits_b)
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch or 0), upstream, revision


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version ``a`` sorts before, equal to or after ``b``."""
    epoch_a, upstream_a, revision_a = _split(a)
    epoch_b, upstream_b, revision_b = _split(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _compare_part(upstream_a, upstream_b) or _compare_part(revision_a, revision_b)
