"""A late command line never bricks a VM (issue 14): the host writes /var/cache/cloud/cmdline through
qemu-guest-agent 3 minutes after the VM started, long after the boot's 60 s wait, as a loaded KVM host
can. The guest keeps listening (cloud-cmdline-watch.path) and configures itself from it: SSH answers on
the control NIC with the key sent, under the name sent, with CloudStack's state written.

Its disk is the amd64 Xen export read back (-xen.vhd.bz2 through Python's bz2 and ``qemu-img -f vpc``), so
this test is also that export's boot proof (issue 4): the VHD boots to SSH on 3922.
"""

from __future__ import annotations

import time

import pytest

from systemvm import contract
from systemvm.boot.patch import ssh_session
from systemvm.boot.qemu import QemuVM
from tests.e2e.vmpool import LISTENING, PoolVM

pytestmark = pytest.mark.e2e

DELIVER_AFTER = 180.0  # seconds after the VM started


def _sh(vm: QemuVM, key, command: str) -> str:
    with ssh_session("127.0.0.1", vm.ssh_port, key) as client:
        _, stdout, _ = client.exec_command(command, timeout=120)
        out = stdout.read().decode(errors="replace")
        assert stdout.channel.recv_exit_status() == 0, f"{command!r} failed: {out}"
    return out


@pytest.mark.vm("late")
def test_command_line_written_three_minutes_after_boot_configures_the_vm(pool_vm: PoolVM) -> None:
    """The VM (amd64 VHD read back, secstorage) boots with the pool, which waits until its console says it
    gave up its first wait; nothing is delivered until 3 minutes after it started."""
    vm, key = pool_vm.ready(), pool_vm.key
    assert key is not None and LISTENING in vm.console_log()
    time.sleep(max(0.0, DELIVER_AFTER - (time.monotonic() - vm.started_at)))
    vm.deliver_cmdline()
    vm.wait_ssh(key, timeout=900)
    assert _sh(vm, key, "hostname").strip() == "s-21-VM"
    sent = contract.parse_cmdline(vm.cmdline)
    assert contract.parse_cmdline(_sh(vm, key, f"cat {contract.CMDLINE_PATH}")) == sent
    assert '"name": "s-21-VM"' in _sh(vm, key, f"cat {contract.CMD_LINE_JSON_PATH}")
    listening = _sh(vm, key, "ss -Htln")
    assert f"{sent['eth0ip']}:{contract.SSH_PORT}" in listening
    log = _sh(vm, key, f"cat {contract.CLOUD_LOG}")
    assert "late configuration done" in log and "command line from /proc/cmdline" in log
    # the boot ended again for the role (postinit after the late configuration), and the late ifup never
    # raced the boot's: networking.service did not fail
    assert _sh(vm, key, f"test -f {contract.BOOT_DONE_PATH} && echo done").strip() == "done"
    assert _sh(vm, key, "systemctl is-failed networking.service || true").strip() != "failed"
    assert _sh(vm, key, "systemctl is-active cloud-late-config.service || true").strip() != "failed"
    assert vm.timings["cmdline_delivered"] >= DELIVER_AFTER
