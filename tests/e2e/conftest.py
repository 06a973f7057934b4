"""Fixtures the e2e tests share: the pool of VMs booting in the background (tests/e2e/vmpool.py); and a run
of e2e tests that skipped every one (``pytest -m e2e`` without ``invoke ci``'s environment) says it tested
nothing and exits 5 instead of passing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.vmpool import PoolVM, VmPool, pool_member


@pytest.fixture(scope="session", autouse=True)
def vm_pool(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmPool]:
    """Every VM the selected tests mark with ``vm(name)``, booting from the first e2e test on."""
    wanted = [m.args[0] for item in request.session.items for m in item.iter_markers("vm")]
    pool = VmPool(wanted, tmp_path_factory.mktemp("vm-pool"))
    try:
        pool.start()
        yield pool
    finally:
        pool.stop()


@pytest.fixture()
def pool_vm(request: pytest.FixtureRequest, vm_pool: VmPool) -> Iterator[PoolVM]:
    """The test's own VM of the pool (its ``vm`` marker), stopped when the test ends."""
    marker = request.node.get_closest_marker("vm")
    assert marker is not None, "a test using pool_vm needs @pytest.mark.vm(name)"
    member = pool_member(vm_pool, marker.args[0])
    try:
        yield member
    finally:
        vm_pool.release(marker.args[0])


# nodeid -> outcome of the e2e tests this session ran ("passed", "failed" or "skipped", with its reason)
_E2E_OUTCOMES: dict[str, tuple[str, str]] = {}
NOTHING_TESTED = pytest.ExitCode.NO_TESTS_COLLECTED  # 5: pytest's own "no tests ran"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "e2e" not in report.keywords:
        return
    if report.when == "call" or report.outcome != "passed":  # a skip or error in setup decides it too
        reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else ""
        _E2E_OUTCOMES.setdefault(report.nodeid, (report.outcome, str(reason)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _E2E_OUTCOMES and all(outcome == "skipped" for outcome, _ in _E2E_OUTCOMES.values()):
        session.exitstatus = NOTHING_TESTED


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    if _E2E_OUTCOMES and all(outcome == "skipped" for outcome, _ in _E2E_OUTCOMES.values()):
        first = next(reason for _, reason in _E2E_OUTCOMES.values()).removeprefix("Skipped: ")
        terminalreporter.write_line(
            f"tested nothing: all {len(_E2E_OUTCOMES)} e2e tests skipped (first: {first}); "
            "run them through 'invoke ci', which builds and sets SYSTEMVM_ARTIFACTS, or give them what they "
            "skipped for",
            red=True,
        )
