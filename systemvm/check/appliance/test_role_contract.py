"""Role contract.

The role's service lists and the state of each service, the role's base rules as CloudStack's boot loads
them, the patch the harness delivered acted on, the agent started from the boot command line, and a machine
ID of this clone's own.
"""

from __future__ import annotations

import re
import shlex

import pytest

from systemvm import contract
from systemvm.boot import payload
from systemvm.check.appliance.target import run_ok

pytestmark = pytest.mark.live


def test_service_lists_are_the_roles(host, params) -> None:
    """enabled_svcs and disabled_svcs list the role's services"""
    enabled, disabled = contract.service_lists(params["role"])
    for path, expected in ((contract.ENABLED_SVCS_PATH, enabled), (contract.DISABLED_SVCS_PATH, disabled)):
        listed = host.file(path)
        assert listed.exists, f"{path} is missing"
        assert listed.content_string.split() == list(expected), (
            f"{path} lists {listed.content_string.split()}; the {params['role']} role has {list(expected)}"
        )


# Enabled but not running until the management server configures them: a router's apache has no site of its
# own (CloudStack's boot removes Debian's; CsApache writes the guest address's virtual host later).
WAIT_FOR_CONFIGURATION = {"router": ("apache2",), "vpcrouter": ("apache2",), "dhcpsrvr": ("apache2",)}


def test_role_services_are_in_their_state(host, params) -> None:
    """The role's enabled services are enabled and active (a router's apache once configured), its
    disabled ones are not active, and ssh.service is not enabled"""
    enabled, disabled = contract.service_lists(params["role"])
    state = {s: host.run(f"systemctl is-active {s}").stdout.strip() for s in (*enabled, *disabled)}
    waiting = WAIT_FOR_CONFIGURATION.get(params["role"], ())
    # nfs-common is masked by Debian: its parts start on demand
    wrong = [f"{s} is {state[s]}" for s in enabled
             if s not in ("nfs-common", *waiting) and state[s] != "active"]  # fmt: skip
    for service in waiting:
        unit_state = host.run(f"systemctl is-enabled {service}").stdout.strip()
        if unit_state != "enabled":
            wrong.append(f"{service} is {unit_state}, not enabled")
    wrong += [f"{s} is active" for s in disabled if state[s] == "active"]
    assert not wrong, f"services of the {params['role']} role in the wrong state: {wrong}"
    # sshd is started by the boot configuration on 3922, never by Debian's unit on 22
    assert host.run("systemctl is-enabled ssh").stdout.strip() == "disabled"


def test_saved_rules_are_the_roles_contract(host, params) -> None:
    """/etc/iptables/rules.v4 holds the role's base rules as CloudStack's boot loads them"""
    from systemvm.guest import firewall

    config = contract.read_config(params.cmdline_args, params.get("hypervisor", "kvm"))
    base = contract.base_rules_v4(contract.BOOT_RULES_FILE_ROLE.get(params["role"], params["role"]))
    vnc_port = params.cmdline_args.get("vncport")
    expected = contract.boot_rules_v4(
        base, params["role"], params.control_nic, firewall.guest_source(config), vnc_port
    )
    saved = host.file(contract.RULES_V4_PATH)
    assert saved.exists, f"{contract.RULES_V4_PATH} is missing"
    assert saved.content_string == expected, (
        f"{contract.RULES_V4_PATH} differs from the {params['role']} role's rules:\n{saved.content_string}"
    )


def test_the_delivered_patch_was_applied(host, params) -> None:
    """The patch the harness delivered was unpacked over / (its marker names this run)"""
    if not params.get("payload_id"):
        pytest.skip("the harness delivered no patch payload")
    marker = host.file(f"/{payload.SCRIPTS_MARKER}")
    assert marker.exists, f"/{payload.SCRIPTS_MARKER} is missing: the patch was not unpacked"
    assert marker.content_string.strip() == params["payload_id"]


def test_agent_runs_with_the_boot_command_line(host, params) -> None:
    """The agent (cloud.service, from the patch's agent.zip) runs with the boot command line: the role and
    the management server's port"""
    if params["role"] not in contract.AGENT_ROLES:
        assert host.run("systemctl is-active cloud").stdout.strip() != "active", "an agent runs on a router"
        return
    if not params.get("mgmt_port"):
        pytest.skip("the harness named no management port")
    pid = run_ok(host, "systemctl show -p MainPID --value cloud").strip()
    assert pid not in ("", "0"), "cloud.service runs no agent"
    words = run_ok(host, f"tr '\\0' ' ' < /proc/{shlex.quote(pid)}/cmdline").split()
    assert f"type={params['role']}" in words, f"the agent runs as {words}"
    assert f"port={params['mgmt_port']}" in words, f"the agent runs as {words}"


def test_machine_id_is_this_clones(host, record_property) -> None:
    """/etc/machine-id is this clone's own, made at its first boot and kept"""
    machine_id = host.file("/etc/machine-id").content_string.strip()
    record_property("machine_id", machine_id)  # tests/e2e/test_matrix.py: no two cells share one
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), f"/etc/machine-id is {machine_id!r}"
    assert machine_id != "0" * 32
    # committed to disk (not only a transient ID on a tmpfs bind mount that is lost at the next boot)
    mounts = run_ok(host, "findmnt -n -o SOURCE,FSTYPE --target /etc/machine-id")
    assert "tmpfs" not in mounts, f"/etc/machine-id is not committed: {mounts.strip()}"
