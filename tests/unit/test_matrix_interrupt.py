"""A matrix interrupted (Ctrl-C, or SIGTERM turned into it) stops its running cells with SIGTERM and waits
for their teardown; queued cells never start. Real cell processes (a stand-in script per cell), no VM."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from systemvm.check import matrix

CELL_SCRIPT = """
import pathlib, signal, sys, time
marks = pathlib.Path(sys.argv[1])
def teardown(signum, frame):
    time.sleep(0.5)  # a VM destroy and a lab teardown take a while
    (marks / (sys.argv[2] + ".torn-down")).write_text("ok")
    sys.exit(130)
signal.signal(signal.SIGTERM, teardown)
(marks / (sys.argv[2] + ".started")).write_text("ok")
time.sleep(60)
"""


def test_an_interrupt_stops_the_running_cell_and_starts_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    def command(cell: matrix.Cell, version: str, artifacts: Path) -> list[str]:
        return [sys.executable, "-c", CELL_SCRIPT, str(marks), cell.label]

    monkeypatch.setattr(matrix, "cell_command", command)
    cells = [matrix.Cell("kvm", "amd64", "router"), matrix.Cell("kvm", "i386", "router")]

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def started() -> list[str]:
        return sorted(p.name for p in marks.glob("*.started"))

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            matrix.run_matrix(cells, "4.20.0", tmp_path / "artifacts", jobs=1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(started()) == 1, f"cells started: {started()} (one at a time, the queued one never)"
    label = started()[0].removesuffix(".started")
    assert (marks / f"{label}.torn-down").exists(), "the running cell was not given its teardown"
    assert time.monotonic() - start < 30, "the matrix waited for the cell's own end, not its teardown"
    assert not matrix._RUNNING, "a cell process is still registered as running"
