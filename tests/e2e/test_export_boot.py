"""Issue 4's last proof: exported disks, read back by independent readers, boot to SSH on 3922.

Each export other than the KVM qcow2 (which the matrix boots) boots once, read back by an independent
reader (tests/e2e/vmpool.py), in the background from the start of the session:
- the i386 OVA's VMDK, taken out of the tar with Python's tarfile and converted by qemu-img's VMDK reader:
  here;
- the amd64 -xen.vhd.bz2, decompressed with Python's bz2 and converted by ``qemu-img -f vpc``: it is the VM
  of tests/e2e/test_late_cmdline.py, which checks SSH on 3922 under the name sent;
- the amd64 -hyperv.vhd.zip's VHD, taken out with Python's zipfile and converted by ``qemu-img -f vpc``: it is
  the KVM VM of tests/e2e/test_suite_can_fail_vm.py, whose healthy run passes the whole appliance suite.
A boot of its own for each would repeat those boots at a TCG boot's price.
"""

from __future__ import annotations

import pytest

from systemvm.boot import sshwait
from tests.e2e.vmpool import PoolVM

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=pytest.mark.vm(f)) for f in ("ova",)])
def test_exported_disk_read_back_boots_to_ssh(fmt: str, pool_vm: PoolVM) -> None:
    vm = pool_vm.ready()
    assert pool_vm.key is not None
    assert sshwait.try_ssh("127.0.0.1", vm.ssh_port, pool_vm.key, command="hostname") == f"v-{fmt}-VM\n"
