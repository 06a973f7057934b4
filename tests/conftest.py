"""Shared by every test directory: the time each test module took, printed at the end of the run.

CI's budget is per run, and a new check is judged by what it costs: this table says where the time goes
(setup, call and teardown of every test, module-scoped VM boots included).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from systemvm.interrupts import sigterm_is_interrupt


def pytest_configure(config: pytest.Config) -> None:
    """A CI runner's timeout sends SIGTERM: treat it as Ctrl-C, so fixtures tear down what they started
    (VMs of the e2e pool run in their own sessions and would outlive a killed test run)."""
    sigterm_is_interrupt()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seconds: dict[str, float] = defaultdict(float)
    tests: dict[str, set[str]] = defaultdict(set)
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            duration = getattr(report, "duration", None)
            if not nodeid or duration is None:
                continue
            module = nodeid.split("::", 1)[0]
            seconds[module] += duration
            tests[module].add(nodeid)
    if not seconds:
        return
    terminalreporter.write_sep("=", "time per test module")
    for module, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{spent:9.1f} s  {len(tests[module]):4d} tests  {module}")
    terminalreporter.write_line(f"{sum(seconds.values()):9.1f} s  in all")
