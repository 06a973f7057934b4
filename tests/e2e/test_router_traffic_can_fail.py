"""Each router traffic check (appliance/test_router_traffic.py) fails on a router broken for it.

One KVM router (i386) boots inside the network lab (the e2e pool's ``router`` VM: its guest and public NICs
on the lab's taps, booting in the background from the start of the session). Its disk is the i386 OVA's
VMDK read back (Python's tarfile, then qemu-img's VMDK reader), so this module is also that export's boot
proof (issue 4): the read-back disk boots to SSH on 3922 and routes. The traffic checks must pass
on it first; then each case breaks one feature, on the VM (IPv4 forwarding off) or in the rules the
management server hands the router (``params["lab"]["rules"]`` without the SNAT rule, the DNAT rule, the
port forward's FORWARD accept, the egress rule, the load balancer's INPUT accept; HAProxy configured to
balance by source address or without health checks; dnsmasq without the guest's static lease, without the
guest VM's name; the VPN with a pre-shared key the peer does not know, its traffic not exempt from source
NAT), runs the checks it targets, expects them to fail, and
repairs the VM for the next case. Afterwards the lab's namespaces and taps and the VM are gone.
Artifacts under ``SYSTEMVM_ARTIFACTS``; skips when they are not there; needs root (the lab).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from systemvm.boot import netlab, routerlab
from systemvm.boot.routerlab import router_rules
from systemvm.check.suite import check_node
from tests.e2e.vmpool import Shell, VmPool, assert_case_fails, check_results, lab_member

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.vm("router"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the network lab needs root"),
]

T = check_node("test_router_traffic.py")
SNAT = T + "test_guest_traffic_leaves_with_the_routers_public_address"
PORT_FORWARD = T + "test_port_forward_reaches_the_guest_backend"
EGRESS = T + "test_egress_rule_blocks_its_destination_only"
CONNTRACK = T + "test_connection_tracking_holds_the_guests_flow"
ROUND_ROBIN = T + "test_load_balancer_takes_turns_over_the_backends"
BACKEND_DOWN = T + "test_load_balancer_stops_sending_to_a_dead_backend"
DHCP = T + "test_dnsmasq_leases_the_guest_its_address_with_the_router_as_gateway"
DNS = T + "test_dnsmasq_answers_a_guest_vms_name"
VPN = check_node("test_router_vpn.py") + "test_site_to_site_vpn_carries_guest_traffic_to_the_peers_network"
VPN_IKEV2, VPN_IKEV1 = VPN + "[ikev2]", VPN + "[ikev1]"
ALL = [SNAT, PORT_FORWARD, EGRESS, CONNTRACK, ROUND_ROBIN, BACKEND_DOWN, DHCP, DNS, VPN_IKEV2, VPN_IKEV1]
PLAN = netlab.LabPlan()


def without(*groups: str) -> dict[str, Any]:
    return {"rules": router_rules(PLAN, without=groups)}


def haproxy(**options: Any) -> dict[str, Any]:
    """The lab's load balancer, handed to the router with another HAProxy configuration."""
    lb = routerlab.lab_params_load_balancer(PLAN)
    return {"load_balancer": {**lb, "config": routerlab.haproxy_config(PLAN, **options)}}


def dhcp(**files: str) -> dict[str, Any]:
    """The lab's guest DHCP and DNS, handed to the router with some of dnsmasq's files changed
    (``dhcphosts``, ``hosts``: /etc/dhcphosts.txt, /etc/hosts)."""
    params = routerlab.lab_params_dhcp(PLAN)
    params["files"] = {**params["files"], **{f"/etc/{name}{'.txt' if name == 'dhcphosts' else ''}": text
                                              for name, text in files.items()}}  # fmt: skip
    return {"dhcp": params}


def vpn(**overrides: Any) -> dict[str, Any]:
    """The lab's VPN, handed to the router with some of its parts changed (merged into the lab's own)."""
    return {"vpn": overrides}


WRONG_PSK = {v: routerlab.vpn_up_commands(PLAN, v, psk="not-the-peers-key") for v in routerlab.VPN_TUNNELS}
# A tunnel that never comes up fails only on the check's wait: shorter than the healthy run's, which
# must allow for a loaded host; here the same tunnel with the right key came up minutes ago.
FAILING_TUNNEL_WAIT = 45


# case -> (break on the VM, repair, lab parameter overrides, checks expected to fail). In this order, one VM.
CASES: dict[str, tuple[str, str, dict[str, Any], list[str]]] = {
    "IPv4 forwarding off": (
        "sysctl -qw net.ipv4.ip_forward=0",
        "sysctl -qw net.ipv4.ip_forward=1",
        {},
        [SNAT, PORT_FORWARD, CONNTRACK],
    ),
    "no SNAT rule": ("true", "true", without("snat"), [SNAT, CONNTRACK]),
    "no DNAT rule": ("true", "true", without("dnat"), [PORT_FORWARD]),
    "port forward not accepted in FORWARD": ("true", "true", without("dnat-forward"), [PORT_FORWARD]),
    "no egress rule": ("true", "true", without("egress"), [EGRESS]),
    "no load balancer INPUT rule": ("true", "true", without("lb-input"), [ROUND_ROBIN, BACKEND_DOWN]),
    "HAProxy balances by source address": ("true", "true", haproxy(balance="source"), [ROUND_ROBIN]),
    "HAProxy without health checks": ("true", "true", haproxy(health_checks=False), [BACKEND_DOWN]),
    "no static lease for the guest": ("true", "true", dhcp(dhcphosts=""), [DHCP]),
    "the guest VM's name is not in the router's hosts": ("true", "true", dhcp(hosts=""), [DNS]),
    "the router's pre-shared key is not the peer's": (
        "true", "true", vpn(tunnels=WRONG_PSK, wait=FAILING_TUNNEL_WAIT), [VPN_IKEV2],
    ),
    "the tunnel's traffic is not exempt from source NAT": (
        "true", "true", vpn(rules=routerlab.vpn_rules(PLAN, without={"vpn-nat-exempt"})), [VPN_IKEV1],
    ),
}  # fmt: skip


def merged(lab: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The lab parameters with ``overrides``; a dict override is merged into the lab's dict of that name."""
    out = dict(lab)
    for key, value in overrides.items():
        both_dicts = isinstance(value, dict) and isinstance(lab.get(key), dict)
        out[key] = {**lab[key], **value} if both_dicts else value
    return out


@pytest.fixture(scope="module")
def router(vm_pool: VmPool) -> Iterator[tuple[Any, dict[str, Any], Shell]]:
    """The pool's router in its lab (booted in the background since the session started), then stopped."""
    with lab_member(vm_pool, "router", "router") as (booted, params, shell):
        # strongSwan once for every run of the checks (the VPN checks leave it running when they found it
        # so): each start of charon costs up to minutes on this emulated guest
        shell.run("ipsec start")
        yield booted, params, shell


@pytest.fixture(scope="module")
def healthy(router: tuple[Any, dict[str, Any], Shell], tmp_path_factory: pytest.TempPathFactory) -> dict:
    _, params, _ = router
    return check_results(params, tmp_path_factory.mktemp("healthy"), "healthy", ALL)


def test_the_healthy_router_passes_the_traffic_checks(healthy: dict[str, tuple[str, str]]) -> None:
    assert {name: result for name, (result, _) in healthy.items()} == {
        node.split("::")[1]: "passed" for node in ALL
    }, f"the healthy router fails: {healthy}"


def test_the_checks_leave_the_routers_rules_as_they_were(router: tuple[Any, dict[str, Any], Shell]) -> None:
    """Run after the healthy run: no lab rule stays on the router (the checks restore what they found)."""
    _, _, shell = router
    saved = shell.run("iptables-save")
    assert "SNAT" not in saved and "DNAT" not in saved and "FW_EGRESS_RULES" not in saved, saved
    assert shell.run("cat /proc/sys/net/ipv4/ip_forward").strip() == "1"


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_router_fails_the_check(
    case: str, router: tuple[Any, dict[str, Any], Shell], healthy: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """The targeted checks fail because of the break: they passed on the healthy router."""
    _, params, shell = router
    break_it, repair, overrides, expected = CASES[case]
    broken = {**params, "lab": merged(params["lab"], overrides)}
    shell.run(break_it)
    try:
        results = check_results(broken, tmp_path, case.replace(" ", "-"), expected)
    finally:
        shell.run(repair)
    assert_case_fails(case, results, expected, healthy, tmp_path, "router")
