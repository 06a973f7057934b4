"""A late command line never bricks a VM (issue 14): the host writes /var/cache/cloud/cmdline through
qemu-guest-agent 3 minutes after the VM started, long after the boot's 60 s wait, as a loaded KVM host
can. The guest keeps listening (cloud-cmdline-watch.path) and configures itself from it: SSH answers on
the control NIC with the key sent, under the name sent, with CloudStack's state written.
"""

from __future__ import annotations

import time

import pytest

from systemvm import contract
from systemvm.boot import sshwait
from systemvm.boot.patch import ssh_session
from systemvm.boot.qemu import QemuVM
from tests.e2e.artifacts import raw_disks

pytestmark = pytest.mark.e2e

DELIVER_AFTER = 180.0  # seconds after the VM started
LISTENING = "listening for a command line from the host"


def _sh(vm: QemuVM, key, command: str) -> str:
    with ssh_session("127.0.0.1", vm.ssh_port, key) as client:
        _, stdout, _ = client.exec_command(command, timeout=120)
        out = stdout.read().decode(errors="replace")
        assert stdout.channel.recv_exit_status() == 0, f"{command!r} failed: {out}"
    return out


@pytest.mark.parametrize("flavour", ["amd64"])
def test_command_line_written_three_minutes_after_boot_configures_the_vm(flavour, tmp_path):
    disk = raw_disks().get(flavour)
    if disk is None:
        pytest.skip(f"no {flavour} raw disk (SYSTEMVM_ARTIFACTS is not set or the build did not make it)")
    key, public = sshwait.make_keypair(tmp_path / "keys")
    (tmp_path / "vm").mkdir()
    vm = QemuVM(disk, role="secstorage", authorized_key=public, name="s-21-VM", work_dir=tmp_path / "vm")
    vm.start()
    try:
        deadline = time.monotonic() + 600
        while LISTENING not in vm.console_log():
            assert vm.alive(), f"the VM stopped\n{vm.console_tail()}"
            assert time.monotonic() < deadline, f"the boot never gave up waiting\n{vm.console_tail()}"
            time.sleep(2)
        time.sleep(max(0.0, DELIVER_AFTER - (time.monotonic() - vm.started_at)))
        vm.deliver_cmdline()
        vm.wait_ssh(key, timeout=600)
        assert _sh(vm, key, "hostname").strip() == "s-21-VM"
        sent = contract.parse_cmdline(vm.cmdline)
        assert contract.parse_cmdline(_sh(vm, key, f"cat {contract.CMDLINE_PATH}")) == sent
        assert '"name": "s-21-VM"' in _sh(vm, key, f"cat {contract.CMD_LINE_JSON_PATH}")
        listening = _sh(vm, key, "ss -Htln")
        assert f"{sent['eth0ip']}:{contract.SSH_PORT}" in listening
        log = _sh(vm, key, f"cat {contract.CLOUD_LOG}")
        assert "late configuration done" in log and "command line from /proc/cmdline" in log
        assert vm.timings["cmdline_delivered"] >= DELIVER_AFTER
    finally:
        vm.stop()
