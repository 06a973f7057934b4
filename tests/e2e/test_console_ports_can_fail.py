"""Each console proxy port check (appliance/test_console_ports.py) fails on a console proxy broken for it.

One KVM console proxy (i386: five cases of a rule or two each, a cheap module for the dearer flavour) boots
the network lab (the e2e pool's ``console`` VM: its public NIC on the lab's public bridge, booting in the
background from the start of the session). Its disk is the i386 OVA's VMDK read back (Python's tarfile, then
qemu-img's VMDK reader), so this module is also that export's boot proof. The port checks must pass on it
first; then each case adds one iptables rule to the VM's live rules (closing a port CloudStack's console proxy
rules open, opening one they keep shut, or refusing one instead of dropping it) or deletes every rule that
accepts HTTPS (the role's ports check fails too), runs the checks it targets, expects them to fail, and
repairs the VM. Afterwards the lab's namespaces and taps and the VM are gone.
Artifacts under ``SYSTEMVM_ARTIFACTS``; skips when they are not there; needs root (the lab).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from systemvm.check.suite import check_node
from systemvm.lab import agentlab
from tests.e2e.vmpool import (
    Shell,
    VmPool,
    assert_case_fails,
    check_results,
    healthy_run,
    lab_member,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.vm("console"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the network lab needs root"),
]

T = check_node("test_console_ports.py")
OPEN = T + "test_the_public_ports_accept_connections_from_the_public_network"
CLOSED = T + "test_other_ports_are_dropped_on_the_public_address"
# the role's ports in its rules (a storage VM's CloudStack rules open none: its agent opens them later)
ROLE_PORTS = check_node("test_iptables.py") + "test_the_roles_ports_are_open"
ALL = [OPEN, CLOSED, ROLE_PORTS]
PUBLIC = agentlab.PUBLIC_DEV
VNC, HTTPS = agentlab.CONSOLE_OPEN_PORTS[-1], agentlab.CONSOLE_OPEN_PORTS[0]
SSH, CONTROL_SSH, _ = agentlab.CONSOLE_CLOSED_PORTS

SAVED = "/root/.svmt-can-fail.rules"
# every rule that accepts HTTPS deleted (the live rules saved first, restored after)
NO_HTTPS_RULES = (
    f"iptables-save > {SAVED} && iptables -S | grep -E -- '--dports? ([0-9]+,)*{HTTPS}( |,|$)' | "
    "grep -- '-j ACCEPT' | sed 's/^-A /-D /' | while read -r r; do iptables $r; done"
)
RESTORE = f"iptables-restore < {SAVED} && rm -f {SAVED}"


def inserted(rule: str) -> tuple[str, str]:
    """(break, repair) of a case that puts ``rule`` first in INPUT."""
    return f"iptables -I INPUT 1 {rule}", f"iptables -D INPUT {rule}"


# case -> (break, repair, the checks expected to fail). In this order, one VM.
CASES: dict[str, tuple[str, str, list[str]]] = {
    "the VNC port closed on the public NIC": (*inserted(f"-i {PUBLIC} -p tcp --dport {VNC} -j DROP"), [OPEN]),
    "HTTPS closed on the public NIC": (*inserted(f"-i {PUBLIC} -p tcp --dport {HTTPS} -j DROP"), [OPEN]),
    "22 opened on the public NIC": (*inserted(f"-i {PUBLIC} -p tcp --dport {SSH} -j ACCEPT"), [CLOSED]),
    "3922 refused instead of dropped": (
        *inserted(f"-i {PUBLIC} -p tcp --dport {CONTROL_SSH} -j REJECT --reject-with tcp-reset"),
        [CLOSED],
    ),
    "no rule accepts HTTPS": (NO_HTTPS_RULES, RESTORE, [OPEN, ROLE_PORTS]),
}


@pytest.fixture(scope="module")
def console(vm_pool: VmPool) -> Iterator[tuple[Any, dict[str, Any], Shell]]:
    """The pool's console proxy in its lab (booted in the background since the session started), then
    stopped."""
    with lab_member(vm_pool, "console", "console proxy") as booted_params_shell:
        yield booted_params_shell


@pytest.fixture(scope="module")
def healthy(console: tuple[Any, dict[str, Any], Shell], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return healthy_run(console, tmp_path_factory, ALL)


def test_the_healthy_console_proxy_passes_the_port_checks(healthy: dict[str, tuple[str, str]]) -> None:
    assert {name: result for name, (result, _) in healthy.items()} == {
        node.split("::")[1]: "passed" for node in ALL
    }, f"the healthy console proxy fails: {healthy}"


def test_the_checks_stop_their_listener(console: tuple[Any, dict[str, Any], Shell]) -> None:
    """Run after the healthy run: nothing the checks started still listens on the public address."""
    booted, _, shell = console
    public_ip = booted.lab.lab.plan.console_public_ip
    assert f"{public_ip}:" not in shell.run("ss -Htln"), "the checks' listener is still running"


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_console_proxy_fails_the_check(
    case: str, console: tuple[Any, dict[str, Any], Shell], healthy: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """The targeted checks fail because of the break: they passed on the healthy console proxy."""
    _, params, shell = console
    break_it, repair, expected = CASES[case]
    shell.run(break_it)
    try:
        results = check_results(params, tmp_path, case, expected)
    finally:
        shell.run(repair)
    assert_case_fails(case, results, expected, healthy, tmp_path, "console proxy")
