"""Router traffic.

Source NAT, a port forward, an egress rule, connection tracking and a load balancer, through the network
lab. Only for a router booted inside the lab (``params["lab"]``, :mod:`systemvm.boot.routerlab`): its guest
NIC (eth0) and public NIC (eth2) are taps on the lab's bridges, with a client and web backends behind eth0
and a public server behind eth2. The module configures the router over SSH as CloudStack's scripts do at
run time (``iptables-restore`` of the rules the lab parameters carry: SNAT, a DNAT port forward, FORWARD
with an egress rule, a load balancer's INPUT accept; HAProxy's configuration written, checked with
``haproxy -c`` and reloaded as CsLoadBalancer does), sends real traffic from the lab's namespaces
(``ip netns exec``: the suite runs on the host), reads what the servers logged and what the router's
connection tracking holds, and restores the router's rules and HAProxy's configuration afterwards. IPv4
forwarding is never turned on here: the boot must have done it.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from systemvm.check.appliance.lab import (
    applicable,
    fetch,
    files_kept,
    in_netns,
    logged_clients,
    rules_applied,
    token,
    wait_for,
    why_not,
)
from systemvm.check.appliance.target import Params, run_ok

pytestmark = [pytest.mark.live]

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
SAVED_HAPROXY = "/root/.svmt-router-traffic.haproxy.cfg"
TUPLE_RE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


@pytest.fixture(scope="module")
def configured_router(host: Any, params: Params) -> Iterator[dict[str, Any] | None]:
    """The router configured with the lab's rules (nat replaced, FORWARD refilled), restored afterwards;
    None where the checks do not apply (they skip in :func:`configured`, each with the reason)."""
    if why_not(params):
        yield None
        return
    with rules_applied(host, params["lab"]) as lab:
        yield lab


@pytest.fixture
def configured(params: Params, configured_router: dict[str, Any] | None) -> dict[str, Any]:
    return applicable(params, configured_router)


def conntrack_entries(host: Any) -> list[str]:
    """The router's connection tracking table: ``conntrack -L`` where the image has it, else
    /proc/net/nf_conntrack."""
    if host.exists("conntrack"):
        return run_ok(host, "conntrack -L 2>/dev/null").splitlines()
    return run_ok(host, "cat /proc/net/nf_conntrack").splitlines()


def test_guest_traffic_leaves_with_the_routers_public_address(configured: dict[str, Any]) -> None:
    """A guest reaches the public network through the router, source-NATed to the router's public address"""
    lab = configured
    path = token()
    done = fetch(lab, "client", lab["public_http"]["url"].rstrip("/") + path)
    assert done.returncode == 0, (
        f"the client could not reach the public server through the router: {done.stderr}"
    )
    seen = logged_clients(lab["public_http"]["access_log"], path)
    public_ip = lab["plan"]["router_public_ip"]
    assert seen == [public_ip], (
        f"the public server saw {seen} for the client's request, not {public_ip} (SNAT)"
    )


def test_port_forward_reaches_the_guest_backend(configured: dict[str, Any]) -> None:
    """A port forward on the router's public address reaches the guest backend, from the original client"""
    lab = configured
    forward = lab["port_forward"]
    backend = lab["backends"][forward["backend"]]
    path = token()
    url = f"http://{lab['plan']['router_public_ip']}:{forward['public_port']}{path}"
    done = fetch(lab, "server", url)
    assert done.returncode == 0, f"{url} from the public server failed: {done.stderr.strip()}"
    assert done.stdout.strip() == forward["backend"], f"{url} answered {done.stdout.strip()!r}"
    seen = logged_clients(backend["access_log"], path)
    assert seen == [lab["plan"]["server_ip"]], f"{forward['backend']} saw {seen}, not the public server"


def test_egress_rule_blocks_its_destination_only(configured: dict[str, Any]) -> None:
    """The egress rule drops the guest's traffic to its destination; other public destinations stay open"""
    lab = configured
    path = token()
    allowed = fetch(lab, "client", f"http://{lab['allowed']}{path}")
    assert allowed.returncode == 0, (
        f"{lab['allowed']} is not reachable from the guest: {allowed.stderr.strip()}"
    )
    blocked_path = token()
    blocked = fetch(lab, "client", f"http://{lab['blocked']}{blocked_path}")
    seen = logged_clients(lab["public_http"]["access_log"], blocked_path)
    assert blocked.returncode != 0 and not seen, (
        f"the guest reached {lab['blocked']}, which the egress rule blocks (the server logged {seen})"
    )


def test_connection_tracking_holds_the_guests_flow(host: Any, configured: dict[str, Any]) -> None:
    """The router's connection tracking holds the guest's flow, answered to the router's public address"""
    lab = configured
    port = 41000 + secrets.randbelow(900)
    plan = lab["plan"]
    done = fetch(lab, "client", f"http://{plan['server_ip']}{token()}", "--local-port", str(port))
    entries = [e for e in conntrack_entries(host) if f"sport={port} " in e and plan["client_ip"] in e]
    assert entries, (
        f"no tracked connection from {plan['client_ip']}:{port} (the fetch: {done.stderr.strip()})"
    )
    tuples = TUPLE_RE.findall(entries[0])
    assert len(tuples) == 2, f"cannot read the entry: {entries[0]}"
    (osrc, odst, _, _), (rsrc, rdst, _, _) = tuples
    assert (osrc, odst) == (plan["client_ip"], plan["server_ip"]), entries[0]
    assert (rsrc, rdst) == (plan["server_ip"], plan["router_public_ip"]), (
        f"the reply direction is not to the router's public address: {entries[0]}"
    )
    assert "UNREPLIED" not in entries[0], f"the server never answered: {entries[0]}"


@pytest.fixture(scope="module")
def load_balancer(host: Any, configured_router: dict[str, Any] | None) -> Iterator[dict[str, Any] | None]:
    """HAProxy on the router with the lab's load balancer configuration, as CsLoadBalancer applies one
    (the new file checked with ``haproxy -c``, moved into place, haproxy reloaded or started); the
    router's own configuration and haproxy's state restored afterwards. None where the checks do not apply."""
    if configured_router is None:
        yield None
        return
    lab = configured_router
    lb = lab["load_balancer"]
    was_active = host.service("haproxy").is_running
    run_ok(host, f"cp -p {HAPROXY_CFG} {SAVED_HAPROXY}")
    try:
        run_ok(host, f"printf %s {shlex.quote(lb['config'])} > {HAPROXY_CFG}.new")
        run_ok(host, f"haproxy -c -q -f {HAPROXY_CFG}.new")
        run_ok(host, f"mv {HAPROXY_CFG}.new {HAPROXY_CFG} && systemctl reload-or-restart haproxy")
        listening = wait_for(lambda: f":{lb['port']} " in run_ok(host, "ss -Htln"), timeout=15)
        assert listening, f"haproxy does not listen on {lb['port']} after the reload"
        yield lab
    finally:
        restart = "systemctl reload-or-restart haproxy" if was_active else "systemctl stop haproxy"
        run_ok(host, f"mv {SAVED_HAPROXY} {HAPROXY_CFG} && {restart}")


@pytest.fixture
def balanced(params: Params, load_balancer: dict[str, Any] | None) -> dict[str, Any]:
    """The lab with HAProxy configured."""
    return applicable(params, load_balancer)


def lb_fetches(lab: dict[str, Any], path: str, count: int) -> list[str]:
    """``count`` requests from the public server to the load balancer: each one's body, or ``error: ...``."""
    url = f"http://{lab['plan']['router_public_ip']}:{lab['load_balancer']['port']}{path}"
    answers = []
    for _ in range(count):
        done = fetch(lab, "server", url)
        answers.append(done.stdout.strip() if done.returncode == 0 else f"error: {done.stderr.strip()}")
    return answers


def test_load_balancer_takes_turns_over_the_backends(balanced: dict[str, Any]) -> None:
    """HAProxy on the router's public address balances round-robin over both guest backends"""
    lab = balanced
    path = token()
    answers = lb_fetches(lab, path, 4)
    backends = lab["load_balancer"]["backends"]
    assert sorted(answers) == sorted(backends * 2) and answers[0] != answers[1], (
        f"four requests to the load balancer were answered by {answers}, not in turns by {backends}"
    )
    for name in backends:
        seen = set(logged_clients(lab["backends"][name]["access_log"], path))
        assert seen == {lab["plan"]["router_guest_ip"]}, (
            f"{name} saw {sorted(seen)}, not the router's guest address (HAProxy proxies the connection)"
        )


def test_load_balancer_stops_sending_to_a_dead_backend(balanced: dict[str, Any]) -> None:
    """HAProxy stops sending to a backend that went down; the other one answers every request"""
    lab = balanced
    lb = lab["load_balancer"]
    alive, dead = lb["backends"][0], lb["backends"][-1]
    switch = lab["switches"]["guest"]
    last: list[list[str]] = []

    def only_alive_answers() -> bool:
        last[:] = [lb_fetches(lab, token(), 4)]
        return last[0] == [alive] * 4

    subprocess.run(["ip", "netns", "exec", switch, "ip", "link", "set", dead, "down"], check=True)
    try:
        # two failed health checks mark it down; a few intervals more for requests already sent to it
        settled = wait_for(only_alive_answers, timeout=10 * lb["health_check_ms"] / 1000 + 10)
    finally:
        subprocess.run(["ip", "netns", "exec", switch, "ip", "link", "set", dead, "up"], check=True)
        # back in the pool before any later check: a passing health check marks it up again
        wait_for(lambda: dead in lb_fetches(lab, token(), 2), timeout=15)
    assert settled, f"with {dead} down, the load balancer still answered {last[0] if last else []}"


SAVED_DHCP = "/root/.svmt-router-traffic.dhcp"
DHCP_WAIT = 30  # dnsmasq's restart under TCG, then the offer


@pytest.fixture(scope="module")
def guest_dhcp(host: Any, configured_router: dict[str, Any] | None) -> Iterator[dict[str, Any] | None]:
    """dnsmasq on the router with the lab's guest network, as CsDhcp configures it (cloud.conf, a static
    lease for the lab client's MAC in dhcphosts.txt, a guest VM's name in /etc/hosts, dnsmasq restarted);
    the router's own files and dnsmasq's state restored afterwards. None where the checks do not apply."""
    if configured_router is None:
        yield None
        return
    lab = configured_router
    files = lab["dhcp"]["files"]
    mac = in_netns(lab, "client", "cat", "/sys/class/net/eth0/address").stdout.strip()
    was_active = host.service("dnsmasq").is_running
    try:
        with files_kept(host, files, SAVED_DHCP):
            for path, text in files.items():
                text = text.replace("{mac}", mac)
                if path == "/etc/hosts":  # added to the router's own names, on a line of its own
                    run_ok(host, f"printf '\\n%s' {shlex.quote(text)} >> {path}")
                else:
                    run_ok(host, f"printf %s {shlex.quote(text)} > {path}")
            run_ok(host, "systemctl restart dnsmasq")
            yield lab
    finally:
        run_ok(host, "systemctl restart dnsmasq" if was_active else "systemctl stop dnsmasq")


@pytest.fixture
def dhcp_ready(params: Params, guest_dhcp: dict[str, Any] | None) -> dict[str, Any]:
    """The lab with dnsmasq configured."""
    return applicable(params, guest_dhcp)


def probe(lab: dict[str, Any], *args: str, timeout: float = 5) -> dict[str, Any]:
    from systemvm.boot import labprobe

    done = in_netns(lab, "client", sys.executable, labprobe.__file__, "--timeout", str(timeout), *args,
                    timeout=timeout + 10)  # fmt: skip
    assert done.returncode == 0, f"the probe {args[0]} failed: {done.stderr.strip()}"
    return dict(json.loads(done.stdout))


def test_dnsmasq_leases_the_guest_its_address_with_the_router_as_gateway(dhcp_ready: dict[str, Any]) -> None:
    """dnsmasq offers a guest its static lease with the router as gateway and resolver"""
    lab = dhcp_ready
    dhcp = lab["dhcp"]
    offer: dict[str, Any] = {}

    def offered() -> bool:
        offer.update(probe(lab, "dhcp", "eth0", timeout=3))
        return bool(offer.get("offer"))

    wait_for(offered, timeout=DHCP_WAIT, step=1)
    assert offer.get("offer") == dhcp["lease_ip"], f"DHCP offered {offer}, not the lease {dhcp['lease_ip']}"
    assert offer["router"] == [dhcp["gateway"]], f"the offer's gateway is {offer['router']}, not the router"
    assert offer["dns"] == [dhcp["resolver"]], f"the offer's resolver is {offer['dns']}, not the router"


def test_dnsmasq_answers_a_guest_vms_name(dhcp_ready: dict[str, Any]) -> None:
    """dnsmasq on the router's guest address answers DNS for a guest VM's name"""
    lab = dhcp_ready
    dhcp = lab["dhcp"]
    answer: dict[str, Any] = {}

    def answered() -> bool:
        answer.update(probe(lab, "dns", dhcp["resolver"], dhcp["dns_name"], timeout=3))
        return answer.get("rcode") is not None

    wait_for(answered, timeout=DHCP_WAIT, step=1)
    assert answer.get("addresses") == [dhcp["dns_ip"]], (
        f"{dhcp['resolver']} answered {answer} for {dhcp['dns_name']}, not {dhcp['dns_ip']}"
    )
