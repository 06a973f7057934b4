"""Each router traffic check (appliance/test_router_traffic.py) fails on a router broken for it.

One KVM router (amd64) boots inside the network lab (the e2e pool's ``router`` VM: its guest and public NICs
on the lab's taps, booting in the background from the start of the session). Its disk is the amd64 OVA's
VMDK read back (Python's tarfile, then qemu-img's VMDK reader), so this module is also that export's boot
proof (issue 4): the read-back disk boots to SSH on 3922 and routes. The traffic checks must pass
on it first; then each case breaks one feature, on the VM (IPv4 forwarding off; Debian's default site back
in apache with ``Include ports.conf``; an empty /etc/dnsmasq.conf; a base rule in the conntrack spelling
CsNetfilter cannot delete) or in what the management server hands the router's handlers
(``params["lab"]["without"]``: the configuration without the SNAT rule, the DNAT rule, the port forward's
FORWARD accept, the ingress firewall rules, the egress rule, the load balancer's INPUT accept; HAProxy
rendered to balance by source address or without health checks; CsDhcp's entries without the guest's
static lease or without the guest VM's name; the VPN with a pre-shared key the peer does not know, its
traffic not exempt from source NAT), runs the checks it targets, expects them to fail (a case may also name
what a failure message must say), and repairs the VM for the next case. Afterwards the lab's namespaces and
taps and the VM are gone.
Artifacts under ``SYSTEMVM_ARTIFACTS``; skips when they are not there; needs root (the lab).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from systemvm.check.suite import check_node
from systemvm.lab import netlab, routerlab
from tests.e2e.vmpool import (
    Shell,
    VmPool,
    assert_case_fails,
    check_results,
    healthy_run,
    lab_member,
    overridden,
)

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
APACHE = T + "test_apache_serves_the_routers_guest_address"
REWRITE = T + "test_every_boot_rule_can_be_rewritten_by_cloudstack"
VPN = check_node("test_router_vpn.py") + "test_site_to_site_vpn_carries_guest_traffic_to_the_peers_network"
VPN_IKEV2, VPN_IKEV1 = VPN + "[ikev2]", VPN + "[ikev1]"
ALL = [SNAT, PORT_FORWARD, EGRESS, CONNTRACK, ROUND_ROBIN, BACKEND_DOWN, DHCP, DNS, APACHE, REWRITE]
# sshd's listeners, what the restart check looks at, run on the router as it is (not restarted)
RESTART_SSH = check_node("test_after_restart.py") + "test_sshd_listens_on_the_control_address_only"
ALL += [VPN_IKEV2, VPN_IKEV1, RESTART_SSH]
PLAN = netlab.LabPlan()


def without(*groups: str) -> dict[str, Any]:
    """The lab's configuration without the rules of ``groups`` (:data:`routerlab.RULE_GROUPS`)."""
    routerlab.check_groups(groups)
    return {"without": list(groups)}


def haproxy(**options: Any) -> dict[str, Any]:
    """The lab's load balancer, rendered by the management server with other options."""
    return {"load_balancer": options}


def dhcp_without(*hosts: str) -> dict[str, Any]:
    """CsDhcp handed the guest network's VM entries without those of the lab ``hosts``."""
    return {"dhcp": {"entries": [e for e in routerlab.dhcp_entries(PLAN) if e["host"] not in hosts]}}


def vpn(**overrides: Any) -> dict[str, Any]:
    """The lab's VPN, handed to the router with some of its parts changed (merged into the lab's own)."""
    return {"vpn": overrides}


SAVED = "/root/.svmt-can-fail"
# Debian's default site and ports.conf back, as on an image whose boot does not clean apache up as
# CloudStack's setup_apache2 does: its *:80 takes the port CsApache's virtual host listens on.
DEBIAN_SITE = "<VirtualHost *:80>\n\tDocumentRoot /var/www/html\n</VirtualHost>\n"
APACHE_DEFAULT_SITE = (
    f"mkdir -p {SAVED} && cp -a /etc/apache2 {SAVED}/apache2 && "
    f"{{ systemctl is-active -q apache2 && touch {SAVED}/apache-active || true; }} && "
    "sed -i 's/^#\\s*Include ports.conf/Include ports.conf/' /etc/apache2/apache2.conf && "
    "grep -q '^Include ports.conf' /etc/apache2/apache2.conf && "
    "printf 'Listen 80\\n' > /etc/apache2/ports.conf && "
    f"printf '{DEBIAN_SITE}' > /etc/apache2/sites-available/000-default.conf && "
    "ln -sf ../sites-available/000-default.conf /etc/apache2/sites-enabled/000-default.conf"
)
APACHE_REPAIR = (
    f"rm -rf /etc/apache2 && cp -a {SAVED}/apache2 /etc/apache2 && "
    f"{{ [ ! -e {SAVED}/apache-active ] || systemctl restart apache2; }} && rm -rf {SAVED}"
)
EMPTY_DNSMASQ_CONF = f"mkdir -p {SAVED} && cp -p /etc/dnsmasq.conf {SAVED}/ && : > /etc/dnsmasq.conf"
DNSMASQ_REPAIR = (
    f"cp -p {SAVED}/dnsmasq.conf /etc/dnsmasq.conf && rm -rf {SAVED} && "
    "{ ! systemctl is-active -q dnsmasq || systemctl restart dnsmasq; }"
)
CONNTRACK_RULE = "INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
# sshd on every address, as a patched sshd_config without ListenAddress leaves it when the boot does not bind
# the control address (what the restart check looks at; run here on the router as it is, not restarted)
SSHD_EVERYWHERE = (
    f"mkdir -p {SAVED} && cp -p /etc/ssh/sshd_config {SAVED}/ && "
    "sed -i 's/^ListenAddress .*/ListenAddress 0.0.0.0:3922/' /etc/ssh/sshd_config && systemctl restart ssh"
)
SSHD_REPAIR = f"cp -p {SAVED}/sshd_config /etc/ssh/sshd_config && rm -rf {SAVED} && systemctl restart ssh"


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
    "no ingress firewall rules": ("true", "true", without("ingress"), [PORT_FORWARD, ROUND_ROBIN]),
    "no egress rule": ("true", "true", without("egress"), [EGRESS]),
    "no load balancer INPUT rule": ("true", "true", without("lb-input"), [ROUND_ROBIN, BACKEND_DOWN]),
    "HAProxy balances by source address": ("true", "true", haproxy(balance="source"), [ROUND_ROBIN]),
    "HAProxy without health checks": ("true", "true", haproxy(health_checks=False), [BACKEND_DOWN]),
    "no static lease for the guest": ("true", "true", dhcp_without("client"), [DHCP]),
    "the guest VM's name is not in the router's hosts": ("true", "true", dhcp_without("web1"), [DNS]),
    "an empty /etc/dnsmasq.conf": (EMPTY_DNSMASQ_CONF, DNSMASQ_REPAIR, {}, [DHCP, DNS]),
    "apache with Debian's default site and ports.conf": (APACHE_DEFAULT_SITE, APACHE_REPAIR, {}, [APACHE]),
    "a base rule in the conntrack spelling": (
        f"iptables -A {CONNTRACK_RULE}", f"iptables -D {CONNTRACK_RULE}", {}, [REWRITE],
    ),
    "sshd listening on every address": (SSHD_EVERYWHERE, SSHD_REPAIR, {}, [RESTART_SSH]),
    "the router's pre-shared key is not the peer's": (
        "true", "true", vpn(tunnels=WRONG_PSK, wait=FAILING_TUNNEL_WAIT), [VPN_IKEV2],
    ),
    "the tunnel's traffic is not exempt from source NAT": (
        "true", "true", vpn(without=["vpn-nat-exempt"]), [VPN_IKEV1],
    ),
}  # fmt: skip
# case -> what the failure message of its check must say (beyond failing)
MESSAGES = {"a base rule in the conntrack spelling": f"-A {CONNTRACK_RULE}"}


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
    return healthy_run(router, tmp_path_factory, ALL)


def test_the_healthy_router_passes_the_traffic_checks(healthy: dict[str, tuple[str, str]]) -> None:
    assert {name: result for name, (result, _) in healthy.items()} == {
        node.split("::")[1]: "passed" for node in ALL
    }, f"the healthy router fails: {healthy}"


def test_the_checks_leave_the_routers_rules_as_they_were(router: tuple[Any, dict[str, Any], Shell]) -> None:
    """Run after the healthy run: no lab rule stays on the router (the checks restore what they found)."""
    _, _, shell = router
    saved = shell.run("iptables-save")
    assert "SNAT" not in saved and "DNAT" not in saved and "NETWORK_STATS" not in saved, saved
    assert "FIREWALL_" not in saved and "-m set" not in saved, saved
    assert shell.run("cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
    # the boot's own virtual host on the guest address, nothing of the checks' CsApache runs
    sites = shell.run("ls /etc/apache2/sites-enabled/").split()
    assert sites == [f"vhost-{PLAN.router_guest_ip}.conf"], f"apache's sites after the checks: {sites}"


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_router_fails_the_check(
    case: str, router: tuple[Any, dict[str, Any], Shell], healthy: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """The targeted checks fail because of the break: they passed on the healthy router."""
    _, params, shell = router
    break_it, repair, overrides, expected = CASES[case]
    broken = {**params, "lab": overridden(params["lab"], overrides)}
    shell.run(break_it)
    try:
        results = check_results(broken, tmp_path, case, expected)
    finally:
        shell.run(repair)
    assert_case_fails(case, results, expected, healthy, tmp_path, "router")
    if case in MESSAGES:
        for name in (node.split("::")[1] for node in expected):
            assert MESSAGES[case] in results[name][1], f"{case}: {name} does not name it: {results[name][1]}"
