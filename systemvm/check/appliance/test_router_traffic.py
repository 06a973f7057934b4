"""Router traffic.

Source NAT, a port forward, an egress rule, connection tracking, a load balancer, DHCP and DNS for the guest
network and the router's own web server, through the network lab. Only for a router booted inside the lab
(``params["lab"]``, :mod:`systemvm.lab.routerlab`): its guest NIC (eth0) and public NIC (eth2) are taps on
the lab's bridges, with a client and web backends behind eth0 and a public server behind eth2.

The module configures the router as CloudStack's router scripts do at run time and nothing more: the files
and commands of the model of ``update_config.py``'s handlers (:mod:`systemvm.lab.updateconfig`: CsAddress,
CsApache, CsDhcp, CsAcl, CsForwardingRules, CsLoadBalancer), the rules applied by the model of CsNetfilter
against the router's live rules and its role's /etc/iptables/iptables-router, ``iptables-save`` kept in
rules.v4 (:func:`systemvm.check.appliance.lab.handlers_applied`). Everything else dnsmasq, apache and the
base rules need is the template's share, as on a CloudStack router. Then it sends real traffic from the
lab's namespaces (``ip netns exec``: the suite runs on the host), reads what the servers logged and what
the router's connection tracking holds, and restores the router afterwards. IPv4 forwarding is never
turned on here: the boot must have done it.
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
    CommandResult,
    applicable,
    fetch,
    handlers_applied,
    in_netns,
    logged_clients,
    router_settings,
    run_commands,
    token,
    traffic_handlers,
    wait_for,
    why_not,
)
from systemvm.check.appliance.target import Params, run_ok
from systemvm.lab import csnetfilter, routerlab, updateconfig

pytestmark = [pytest.mark.live]

TUPLE_RE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


@pytest.fixture(scope="module")
def boot_rewrite(host: Any, params: Params) -> Iterator[dict[str, Any] | None]:
    """The router's rules as the boot loaded them (before anything here configures it), and for each one
    CsAddress does not want an equal rule of, whether its rebuilt ``-D`` names the kernel's rule
    (``iptables -C`` with the same rebuilt text, which changes nothing). None where the checks do not
    apply."""
    if why_not(params):
        yield None
        return
    save = run_ok(host, "iptables-save")
    wanted = updateconfig.desired_rules([updateconfig.cs_address(router_settings(params))])
    candidates = csnetfilter.rewrite_candidates(save, wanted)
    checked = run_commands(host, [rule.rebuilt("-C") for rule in candidates])
    yield {"save": save, "checked": list(zip(candidates, checked, strict=True))}


@pytest.fixture(scope="module")
def configured_router(
    host: Any, params: Params, boot_rewrite: dict[str, Any] | None
) -> Iterator[dict[str, Any] | None]:
    """The router configured by the lab's handlers (:func:`systemvm.check.appliance.lab.handlers_applied`)
    and restored afterwards; None where the checks do not apply (they skip in :func:`configured`, each
    with the reason)."""
    if why_not(params) or boot_rewrite is None:
        yield None
        return
    lab = params["lab"]
    settings = router_settings(params)
    with handlers_applied(
        host, params["role"], traffic_handlers(host, params), lab.get("without", ())
    ) as applied:
        dhcp = {**lab["dhcp"], **routerlab.dhcp_expectations(settings)}
        yield {**lab, "applied": applied, "dhcp": dhcp, "boot_rewrite": boot_rewrite}


@pytest.fixture
def configured(params: Params, configured_router: dict[str, Any] | None) -> dict[str, Any]:
    return applicable(params, configured_router)


def failures(results: list[CommandResult]) -> str:
    return "; ".join(f"`{r.command}` exited {r.status}: {r.output[-300:]}" for r in results) or "none"


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
def load_balancer(host: Any, configured_router: dict[str, Any] | None) -> dict[str, Any] | None:
    """The lab with HAProxy listening on the load balancer's port once CsLoadBalancer reloaded or restarted
    it (None where the checks do not apply)."""
    if configured_router is None:
        return None
    lab = configured_router
    port = lab["load_balancer"]["port"]
    listening = wait_for(lambda: f":{port} " in run_ok(host, "ss -Htln"), timeout=15)
    applied = lab["applied"]
    assert listening, (
        f"haproxy does not listen on {port} after CsLoadBalancer's reload or restart "
        f"(its failed commands: {failures(applied.failed('haproxy'))}; haproxy is "
        f"{host.run('systemctl is-active haproxy').stdout.strip()})"
    )
    return lab


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


# HAProxy's runtime API, where the management server's rendering puts it (``stats socket`` in ``global``)
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
SERVER_STATES = {"0": "stopped", "1": "starting", "2": "running", "3": "stopping"}  # srv_op_state


def haproxy_server_states(host: Any) -> dict[str, str]:
    """HAProxy's own view of its servers (``show servers state`` on its socket): address -> state."""
    script = (
        f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({HAPROXY_SOCKET!r}); "
        "s.sendall(b'show servers state\\n'); print(s.makefile().read())"
    )
    lines = run_ok(host, f"python3 -c {shlex.quote(script)}").splitlines()
    header = next((line[2:].split() for line in lines if line.startswith("# be_id")), None)
    if header is None:
        return {}
    addr, state = header.index("srv_addr"), header.index("srv_op_state")
    rows = [line.split() for line in lines if line and line[0].isdigit() and len(line.split()) > state]
    return {row[addr]: SERVER_STATES.get(row[state], row[state]) for row in rows}


def test_load_balancer_stops_sending_to_a_dead_backend(host: Any, balanced: dict[str, Any]) -> None:
    """HAProxy marks a backend that went down as stopped and stops sending to it; the other one answers
    every request. The answers alone cannot tell: the rendering's ``option redispatch`` and ``retries`` send a
    request that failed on the dead backend to the other one, health checks or not."""
    lab = balanced
    lb = lab["load_balancer"]
    alive, dead = lb["backends"][0], lb["backends"][-1]
    dead_ip = lab["backends"][dead]["ip"]
    switch = lab["switches"]["guest"]
    last: list[list[str]] = []
    states: dict[str, str] = {}

    def only_alive_answers() -> bool:
        states.clear()
        states.update(haproxy_server_states(host))
        last[:] = [lb_fetches(lab, token(), 4)]
        return states.get(dead_ip) == "stopped" and last[0] == [alive] * 4

    subprocess.run(["ip", "netns", "exec", switch, "ip", "link", "set", dead, "down"], check=True)
    try:
        # two failed health checks mark it down; a few intervals more for requests already sent to it
        settled = wait_for(only_alive_answers, timeout=10 * lb["health_check_ms"] / 1000 + 10)
    finally:
        subprocess.run(["ip", "netns", "exec", switch, "ip", "link", "set", dead, "up"], check=True)
        # back in the pool before any later check: a passing health check marks it up again
        wait_for(lambda: dead in lb_fetches(lab, token(), 2), timeout=15)
    assert settled, (
        f"with {dead} ({dead_ip}) down, HAProxy's servers are {states or 'unknown (its socket gave none)'} "
        f"and the load balancer answered {last[0] if last else []}"
    )


DHCP_WAIT = 30  # dnsmasq's restart under TCG, then the offer


def dnsmasq_state(host: Any, lab: dict[str, Any]) -> str:
    """dnsmasq's state and CsDhcp's failed commands, for a failure message."""
    active = host.run("systemctl is-active dnsmasq").stdout.strip()
    return f"dnsmasq is {active}; CsDhcp's failed commands: {failures(lab['applied'].failed('dnsmasq'))}"


def probe(lab: dict[str, Any], *args: str, timeout: float = 5) -> dict[str, Any]:
    from systemvm.lab import probe as labprobe

    done = in_netns(lab, "client", sys.executable, labprobe.__file__, "--timeout", str(timeout), *args,
                    timeout=timeout + 10)  # fmt: skip
    assert done.returncode == 0, f"the probe {args[0]} failed: {done.stderr.strip()}"
    return dict(json.loads(done.stdout))


def test_dnsmasq_leases_the_guest_its_address_with_the_router_as_gateway(
    host: Any, configured: dict[str, Any]
) -> None:
    """dnsmasq offers a guest its static lease with the router as gateway and resolver"""
    lab = configured
    dhcp = lab["dhcp"]
    offer: dict[str, Any] = {}

    def offered() -> bool:
        offer.update(probe(lab, "dhcp", "eth0", timeout=3))
        return bool(offer.get("offer"))

    wait_for(offered, timeout=DHCP_WAIT, step=1)
    assert offer.get("offer") == dhcp["lease_ip"], (
        f"DHCP offered {offer}, not the lease {dhcp['lease_ip']} CsDhcp wrote into /etc/dhcphosts.txt "
        f"(dnsmasq reads that file only when /etc/dnsmasq.conf names it); {dnsmasq_state(host, lab)}"
    )
    assert offer["router"] == [dhcp["gateway"]], f"the offer's gateway is {offer['router']}, not the router"
    assert offer["dns"] == dhcp["resolvers"], (
        f"the offer's resolvers are {offer['dns']}, not CsDhcp's {dhcp['resolvers']}"
    )


def test_dnsmasq_answers_a_guest_vms_name(host: Any, configured: dict[str, Any]) -> None:
    """dnsmasq on the router's guest address answers DNS for a guest VM's name in the network's domain"""
    lab = configured
    dhcp = lab["dhcp"]
    name = f"{dhcp['dns_name']}.{dhcp['domain']}"
    answer: dict[str, Any] = {}

    def answered() -> bool:
        answer.update(probe(lab, "dns", dhcp["resolver"], name, timeout=3))
        return answer.get("rcode") is not None

    wait_for(answered, timeout=DHCP_WAIT, step=1)
    assert answer.get("addresses") == [dhcp["dns_ip"]], (
        f"{dhcp['resolver']} answered {answer} for {name}, not {dhcp['dns_ip']} (CsDhcp put the name in "
        f"/etc/hosts; dnsmasq.conf's expand-hosts and domain= make it a name in the domain); "
        f"{dnsmasq_state(host, lab)}"
    )


def test_apache_serves_the_routers_guest_address(host: Any, configured: dict[str, Any]) -> None:
    """apache serves the router's guest address (CsApache's virtual host)"""
    lab = configured
    name = f"{token().lstrip('/')}.txt"
    path = f"/var/www/html/{name}"
    url = f"http://{lab['plan']['router_guest_ip']}/{name}"
    run_ok(host, f"printf %s {name} > {path} && chmod 644 {path}")
    try:
        done = fetch(lab, "client", url, "--write-out", "\n%{http_code}")
    finally:
        run_ok(host, f"rm -f {path}")
    active = host.run("systemctl is-active apache2").stdout.strip()
    journal = host.run("journalctl -u apache2 -n 3 --no-pager -o cat").stdout.strip()
    error_log = host.run("tail -n 3 /var/log/apache2/error.log").stdout.strip()
    restart = failures(lab["applied"].failed("apache2"))
    assert active == "active", (
        f"apache2 is {active} after CsApache's vhost and restart (failed: {restart}); "
        f"its journal: {journal}; its error log: {error_log}"
    )
    body, _, status = done.stdout.rpartition("\n")
    assert done.returncode == 0 and status == "200" and body == name, (
        f"{url} from the guest client answered {status or done.stderr.strip()!r} with {body!r}, "
        f"not apache's 200 with the file from /var/www/html"
    )


def test_every_boot_rule_can_be_rewritten_by_cloudstack(configured: dict[str, Any]) -> None:
    """Every rule the router booted with can be rewritten by CloudStack's CsNetfilter"""
    stuck = [
        f"{rule.table}: {rule.text}  (CloudStack would run `{rule.rebuilt('-D')}`: `iptables -C` "
        f"exited {result.status}: {result.output.splitlines()[0] if result.output else ''})"
        for rule, result in configured["boot_rewrite"]["checked"]
        if result.status != 0
    ]
    assert not stuck, (
        "these rules of the router's boot are neither wanted by CsAddress.fw_router nor removable by "
        "CsNetfilter's rebuilt -D, so they would stick through every update_config.py run: "
        + "; ".join(stuck)  # one line: a report keeps a failure's first line
    )
