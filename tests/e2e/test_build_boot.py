"""Issue 2's proof: each built raw disk boots under plain QEMU (TCG here) to SSH on 3922 with our key."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm import sshwait
from systemvm.qemu_boot import QemuVM
from tests.e2e.artifacts import raw_disks

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("flavour", ["amd64", "i386"])
def test_raw_disk_boots_to_ssh_on_3922_with_injected_key(flavour: str, tmp_path: Path) -> None:
    disk = raw_disks().get(flavour)
    if disk is None:
        pytest.skip("SYSTEMVM_ARTIFACTS is not set (invoke ci sets it after building)")
    key, public = sshwait.make_keypair(tmp_path)
    with QemuVM(
        disk, role="secstorage", authorized_key=public, name=f"s-{flavour}-VM", work_dir=tmp_path
    ) as vm:
        vm.wait_ssh(key, timeout=420)
        out = sshwait.try_ssh(
            "127.0.0.1", vm.ssh_port, key, command="uname -m; cat /root/.ssh/authorized_keys"
        )
        assert out is not None
        machine, authorized = out.split("\n", 1)
        assert machine == {"amd64": "x86_64", "i386": "i686"}[flavour]
        assert public.split()[1] in authorized
        # nothing answers on 22: sshd is on 3922 only
        assert (
            sshwait.try_ssh("127.0.0.1", vm.ssh_port, key, command="ss -Htln 'sport = :22' | wc -l") == "0\n"
        )
