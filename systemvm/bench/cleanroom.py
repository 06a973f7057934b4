"""Bench section ``cleanroom``: what each stage of the clean-room check of host-packages.txt cost."""

from __future__ import annotations

from systemvm.bench.table import Rows


def bench_clean_room(flavours: list[str]) -> Rows:
    """The clean-room check of host-packages.txt: what each stage cost, and whether the root was reused."""
    from systemvm.cleanroom import check_host_packages

    result = check_host_packages(flavours)
    rows: Rows = [(f"clean room: {stage}", f"{seconds:.0f} s") for stage, seconds in result.seconds.items()]
    rows.append(("clean room: root", "reused" if result.root_reused else "made"))
    rows.append(("clean room", "PASS" if result.ok else "FAIL"))
    return rows
