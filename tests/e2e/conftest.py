"""Fixtures the e2e tests share: the pool of VMs booting in the background (tests/e2e/vmpool.py)."""

from __future__ import annotations

from collections.abc import Iterator

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
