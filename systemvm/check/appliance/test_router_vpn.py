"""Router site-to-site VPN.

An IPsec tunnel from the router to the lab's strongSwan peer, once per IKE version with the proposal
CloudStack's customer gateways offer by default, through the network lab (``params["lab"]``,
:mod:`systemvm.lab.routerlab`). The module has the model of CloudStack's handlers configure the rules the
tunnel's traffic crosses (CsAddress, CsAcl, CsForwardingRules) and CsSite2SiteVpn's (IKE, NAT-T and ESP
accepted from the peer, the tunnel's traffic exempt from source NAT), applied through the model of
CsNetfilter (:func:`systemvm.check.appliance.lab.handlers_applied`), starts strongSwan as CloudStack's
router scripts do when a VPN is configured, writes the connection and its secret, runs ``ipsec reload`` and
waits for the tunnel it starts by itself. The guest client then reaches a host of the peer's network: the
peer's server must log the client's own address (source NAT would show the router's, and only the tunnel
routes the peer's answers back to the guest network), and the peer must hold the tunnel's SA with that IKE
version and CloudStack's proposal. Files, rules and strongSwan's state are restored afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from systemvm.check.appliance.lab import (
    applicable,
    fetch,
    files_kept,
    handlers_applied,
    logged_clients,
    router_settings,
    token,
    wait_for,
    why_not,
)
from systemvm.check.appliance.target import Params, run_ok
from systemvm.lab import routerlab
from systemvm.lab.routerlab import charon_answers, vpn_is_up

pytestmark = [pytest.mark.live]

SAVED_VPN = "/root/.svmt-router-vpn"
CHARON_WAIT = 180.0  # charon answers within seconds on a real CPU; minutes on an emulated, loaded host
TUNNEL_WAIT = 120.0  # from `ipsec reload` to the CHILD_SA installed, under TCG (``vpn["wait"]`` overrides)
VERSIONS = ("ikev2", "ikev1")


def peer_swanctl(vpn: dict[str, Any], *args: str) -> str:
    """``swanctl`` against the lab peer's charon (its namespace, its own strongswan.conf)."""
    peer = vpn["peer"]
    done = subprocess.run(
        ["ip", "netns", "exec", peer["netns"], "swanctl", *args],
        env={"STRONGSWAN_CONF": peer["strongswan_conf"], "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def vpn_router(host: Any, params: Params) -> Iterator[dict[str, Any] | None]:
    """The router with the rules of the lab's handlers and the tunnel's, and strongSwan running; its files,
    rules and strongSwan's state restored afterwards. None where the checks do not apply."""
    if why_not(params):
        yield None
        return
    lab = params["lab"]
    vpn = lab["vpn"]
    without = [*lab.get("without", ()), *vpn.get("without", ())]
    routerlab.check_groups(without, routerlab.RULE_GROUPS + routerlab.VPN_RULE_GROUPS)
    handlers = routerlab.vpn_handlers(routerlab.plan_of(lab), router_settings(params))
    was_running = host.run("ipsec status").rc == 0  # the starter runs (charon may still be starting)
    try:
        with (
            files_kept(host, vpn["files"], SAVED_VPN),
            handlers_applied(host, params["role"], handlers, without),
        ):
            if not was_running:
                run_ok(host, "ipsec start")
            answered = wait_for(lambda: charon_answers(host.run("ipsec status").stdout), CHARON_WAIT, step=1)
            assert answered, f"charon did not answer `ipsec status` within {CHARON_WAIT:.0f} s"
            yield dict(lab)
    finally:
        run_ok(host, "ipsec reload" if was_running else "ipsec stop")


@pytest.fixture
def vpn(params: Params, vpn_router: dict[str, Any] | None) -> dict[str, Any]:
    return applicable(params, vpn_router)


@pytest.mark.parametrize("version", VERSIONS)
def test_site_to_site_vpn_carries_guest_traffic_to_the_peers_network(
    host: Any, vpn: dict[str, Any], version: str
) -> None:
    """An IPsec site-to-site tunnel (PSK, CloudStack's default proposal) carries guest traffic to the peer"""
    lab = vpn
    tunnel = lab["vpn"]
    status = ""

    def up() -> bool:
        nonlocal status
        status = host.run(tunnel["status"]).stdout
        return vpn_is_up(status)

    wait = float(tunnel.get("wait", TUNNEL_WAIT))
    for command in tunnel["tunnels"][version]:
        run_ok(host, command)
    try:
        came_up = wait_for(up, timeout=wait, step=1)
        assert came_up, (
            f"the {version} tunnel did not come up within {wait:.0f} s; the router: {status.strip()}"
            f"\n the peer: {peer_swanctl(tunnel, '--list-sas').strip()}"
        )
        path = token()
        done = fetch(lab, "client", f"http://{tunnel['target']}{path}")
        seen = logged_clients(lab["public_http"]["access_log"], path)
        client = lab["plan"]["client_ip"]
        assert done.returncode == 0 and seen == [client], (
            f"through the {version} tunnel the peer's network saw {seen}, not the guest {client} "
            f"(the fetch: {done.stderr.strip() or 'answered'})"
        )
        sas = peer_swanctl(tunnel, "--list-sas")
        ike = f"IKEv{version[-1]}"
        proposal = tunnel["ike_sa"][version]
        assert f"ESTABLISHED, {ike}," in sas and proposal in sas and "INSTALLED" in sas, (
            f"the peer holds no {ike} tunnel with {proposal}: {sas.strip()}"
        )
    finally:
        host.run(f"ipsec down {tunnel['status'].split()[-1]}")
