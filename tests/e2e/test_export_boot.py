"""Issue 4's last proof: exported disks, read back by independent readers, boot to SSH on 3922.

The VHD is decompressed with Python's bz2 and converted by qemu-img's own VHD reader (``-f vpc``); the
OVA's VMDK is taken out of the tar with Python's tarfile and converted by qemu-img's VMDK reader; the
Hyper-V zip's VHD is taken out with Python's zipfile and converted by ``qemu-img -f vpc``
(tests/e2e/vmpool.py). Each flavour is covered once by the Xen and VMware files (amd64 through the VHD,
i386 through the OVA); the Hyper-V file boots for amd64. All boot in the background from the start of the
session, with the other VMs of the pool.
"""

from __future__ import annotations

import pytest

from systemvm.boot import sshwait
from tests.e2e.vmpool import PoolVM

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=pytest.mark.vm(f)) for f in ("vhd", "ova", "hyperv")])
def test_exported_disk_read_back_boots_to_ssh(fmt: str, pool_vm: PoolVM) -> None:
    vm = pool_vm.ready()
    assert pool_vm.key is not None
    assert sshwait.try_ssh("127.0.0.1", vm.ssh_port, pool_vm.key, command="hostname") == f"v-{fmt}-VM\n"
