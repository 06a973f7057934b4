"""Boot real exported templates through libvirt (TCG here) to SSH on 3922, the command line delivered by
the guest agent; both flavours. Artifacts: ``SYSTEMVM_KVM_QCOW2`` (colon-separated ``.qcow2``/``.qcow2.bz2``
paths); the test skips only when it is unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm import contract
from systemvm.boot import sshwait
from systemvm.boot.harness import VmRequest, boot_system_vm, flavour_of, kvm_artifacts_from_env
from systemvm.boot.hypervisors import libvirtd

pytestmark = pytest.mark.e2e

ARTIFACTS = kvm_artifacts_from_env()


@pytest.mark.skipif(not ARTIFACTS, reason="SYSTEMVM_KVM_QCOW2 is not set")
@pytest.mark.parametrize("artifact", ARTIFACTS, ids=[Path(p).name for p in ARTIFACTS])
def test_template_boots_to_ssh_on_3922_with_cmdline_from_the_guest_agent(
    artifact: Path, tmp_path: Path
) -> None:
    flavour = flavour_of(artifact)
    with boot_system_vm(
        VmRequest("kvm", flavour, "secstorage", artifact=artifact, work_dir=tmp_path, with_patch=False)
    ) as vm:
        prefix = vm.run_prefix
        sent = contract.parse_cmdline(vm.cmdline)
        received = sshwait.try_ssh(
            vm.target.host, vm.target.port, vm.key_file, command="cat /var/cache/cloud/cmdline"
        )
        assert received is not None, "SSH on 3922 stopped answering"
        assert contract.parse_cmdline(received) == sent
        arch = sshwait.try_ssh(vm.target.host, vm.target.port, vm.key_file, command="uname -m")
        assert (
            arch is not None
            and arch.strip() == {"amd64": "x86_64", "i386": "i686", "arm64": "aarch64"}[flavour]
        )
        assert vm.console_log()  # the serial console is logged
    conn = libvirtd.connect()
    try:
        assert not [d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    finally:
        conn.close()
    assert not list(tmp_path.glob(f"{prefix}*"))
