"""After a restart.

A router restarted the way CloudStack restarts one: a clean reboot, the command line delivered again through
the hypervisor, then the patch run right after the copy and the version handshake, as after its first boot.
Whatever sshd_config and scripts the patch left, the boot must bind sshd to the control address only, load the
role's rules, end with boot_up_done, and answer the management server as before. The suite runs this module
only on a VM it restarted (``params["restarts"]``), after the other checks.
"""

from __future__ import annotations

from typing import Any

import pytest

from systemvm import contract
from systemvm.check.appliance.target import Params, boot_epoch, parse_listeners, parse_policies, run_ok

pytestmark = [pytest.mark.live]


def test_sshd_listens_on_the_control_address_only(host: Any, params: Params) -> None:
    """After a restart sshd listens on the control address only, whatever sshd_config the patch left"""
    listeners = [(address, port) for address, port, _ in parse_listeners(run_ok(host, "ss -Htln"))]
    on_3922 = sorted({address for address, port in listeners if port == contract.SSH_PORT})
    assert on_3922 == [params.control_ip], (
        f"after the restart sshd listens for 3922 on {on_3922}, not on {params.control_ip} only"
    )


def test_the_command_line_was_delivered_again(host: Any, params: Params) -> None:
    """After a restart the command line the host delivered again configured the VM (not the old file)"""
    cmdline = host.file(contract.CMDLINE_PATH)
    assert cmdline.exists, f"{contract.CMDLINE_PATH} is missing"
    assert cmdline.mtime.timestamp() >= boot_epoch(host), (
        f"{contract.CMDLINE_PATH} is from before this boot: the host's new delivery was not taken"
    )
    applied = host.file(contract.APPLIED_CMDLINE_PATH)
    assert applied.exists and applied.content_string.strip() == params["cmdline"].strip(), (
        "this boot was not configured from the command line the host delivered"
    )


def test_the_boot_ended_and_the_network_came_up(host: Any) -> None:
    """After a restart the boot ended (boot_up_done of this boot) and networking.service did not fail"""
    done = host.file(contract.BOOT_DONE_PATH)
    assert done.exists and done.mtime.timestamp() >= boot_epoch(host), (
        f"{contract.BOOT_DONE_PATH} was not written by this boot"
    )
    state = host.run("systemctl is-failed networking.service").stdout.strip()
    journal = host.run("journalctl -b -u networking -q").stdout[-500:] if state == "failed" else ""
    assert state != "failed", f"networking.service failed: {journal}"


def test_the_roles_rules_are_loaded_again(host: Any, params: Params) -> None:
    """After a restart the role's rules are loaded: INPUT and FORWARD DROP, 3922 on the control NIC"""
    live = run_ok(host, "iptables -S")
    policies = parse_policies(live)
    assert (policies.get("INPUT"), policies.get("FORWARD")) == ("DROP", "DROP"), f"policies {policies}"
    ssh_rules = [line for line in live.splitlines() if f"--dport {contract.SSH_PORT}" in line]
    assert ssh_rules and all(f"-i {params.control_nic} " in line for line in ssh_rules), (
        f"3922 after the restart: {ssh_rules}"
    )


def test_the_patch_and_handshake_answer_as_before(params: Params) -> None:
    """After a restart the patch run right after the copy gives exactly version:<digest>, and the handshake
    answers release&signature with that digest"""
    patch = params.get("boot_patch") or {}
    handshake = params.get("handshake") or {}
    assert patch.get("exit_status") == 0 and patch.get("version") == patch.get("expected"), (
        f"the patch after the restart: {patch.get('output', '')!r}"
    )
    parsed = handshake.get("parsed")
    assert parsed and parsed[1] == patch["expected"], f"the handshake after the restart: {handshake}"
