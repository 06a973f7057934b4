"""A router VM inside the network lab: the lab with its services, what the checks are told about it, and the
rules the checks configure the router with.

:func:`router_lab` builds the lab (:mod:`systemvm.boot.netlab`) with the web backends on the guest network and
the public HTTP site on the public server; the harness then boots the router with its guest NIC (eth0) and
public NIC (eth2) on the lab's taps and plugs them right after the VM started
(``boot_system_vm(..., lab=lab)``). :func:`lab_params` is the JSON the appliance suite gets as
``params["lab"]``: the namespaces to ``ip netns exec`` into, the addresses, the access logs and the rules.

The rules are what a management server has CloudStack's router scripts apply at run time (never baked into
the image), in their shapes (``CsAddress.fw_router``, the port-forwarding and egress rules of
``configure.py``, applied by ``iptables-restore`` as ``CsNetfilter`` does):

- source NAT: ``nat POSTROUTING -s <guest cidr> -o eth2 -j SNAT --to-source <public ip>``;
- a port forward: ``nat PREROUTING -d <public ip>/32 -i eth2 -p tcp --dport 8080 -j DNAT
  --to-destination <web1>:80``, and the FORWARD accept of its new connections;
- FORWARD: the public side's replies (RELATED,ESTABLISHED), guest to public through ``FW_OUTBOUND`` and
  ``FW_EGRESS_RULES``, where the egress rule drops one destination and the rest is accepted;
- a load balancer rule: the INPUT accept of new connections to ``<public ip>:8081`` (``CsLoadBalancer``
  opens each load balancer's port), with HAProxy's configuration (:func:`haproxy_config`, a ``listen``
  section per rule as the management server's HAProxy configurator renders it) balancing over web1 and web2.

A site-to-site VPN to the lab's strongSwan peer (the public server, with the site network 10.2.2.0/24 behind
it) is configured the way ``CsSite2SiteVpn`` does it: ``/etc/ipsec.d/ipsec.vpn-<peer>.conf`` (one ``conn``,
PSK, ``auto=start``) and its ``.secrets`` (mode 0400) under the ``include`` lines of CloudStack's
/etc/ipsec.conf and /etc/ipsec.secrets, then ``ipsec reload``; its rules accept IKE, NAT-T and ESP from the
peer and mark the tunnel's traffic so source NAT leaves it alone (:func:`vpn_rules`).

Each rule belongs to a named group, so a can-fail test can hand the checks the rules without one
(:func:`router_rules` ``without=``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import shlex
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from systemvm.boot import labservices, netlab

GUEST_DEV, PUBLIC_DEV = "eth0", "eth2"  # CloudStack's router NIC order: guest, control, public
FORWARD_PORT = 8080  # the public port forwarded to web1's port 80
BACKEND_PORT = 80
LB_PORT = 8081  # the load balancer's public port: not one the role's boot firewall opens
RULE_GROUPS = ("forward", "snat", "dnat", "dnat-forward", "egress", "lb-input")
VPN_RULE_GROUPS = ("vpn-input", "vpn-nat-exempt")
HEALTH_CHECK_MS = 1000  # HAProxy's check interval: a backend is down after two failed checks


DHCP_TAG = f"interface-{GUEST_DEV}-0"  # CsDhcp tags each guest range by its device
# the client's static lease (not its lab address: the offer must come from dnsmasq)
DHCP_LEASE_IP = "10.1.1.20"
DHCP_NAME = "client-vm"
DNS_NAME, DNS_IP_INDEX = "web1-vm", 0  # a guest VM's name in the router's /etc/hosts, answered by dnsmasq
DNS_DOMAIN = "cs2cloud.internal"  # CloudStack's default guest network domain


def dnsmasq_files(plan: netlab.LabPlan) -> dict[str, str]:
    """What CsDhcp writes for a guest network (path -> text): /etc/dnsmasq.d/cloud.conf (a static range on the
    guest subnet, tagged by device, with the domain, resolver and router options), /etc/dhcphosts.txt (one
    ``<mac>,<ip>,<name>,infinite`` line per VM; ``{mac}`` is filled in with the lab client's MAC) and the
    /etc/hosts line dnsmasq answers a guest VM's name from."""
    network = ipaddress.ip_network(plan.guest_cidr)
    options = [
        f"dhcp-option=tag:{DHCP_TAG},15,{DNS_DOMAIN}",
        f"dhcp-option=tag:{DHCP_TAG},6,{plan.router_guest_ip}",
        f"dhcp-option=tag:{DHCP_TAG},3,{plan.router_guest_ip}",
    ]
    conf = [
        "dhcp-hostsfile=/etc/dhcphosts.txt",
        f"dhcp-range=set:{DHCP_TAG},{network.network_address},static,{network.netmask},infinite",
        *options,
        f"domain={DNS_DOMAIN}",
        "",
    ]
    return {
        "/etc/dnsmasq.d/cloud.conf": "\n".join(conf),
        "/etc/dhcphosts.txt": f"{{mac}},{DHCP_LEASE_IP},{DHCP_NAME},infinite\n",
        "/etc/hosts": f"{plan.backend_ips[DNS_IP_INDEX]} {DNS_NAME}\n",  # appended to the router's own file
    }


def haproxy_config(plan: netlab.LabPlan, balance: str = "roundrobin", health_checks: bool = True) -> str:
    """/etc/haproxy/haproxy.cfg for one load balancer rule, ``<public ip>:8081`` over the web backends, in
    the shape CloudStack's HAProxy configurator gives it (global/defaults, one ``listen`` per rule,
    ``server <rule>_<n> <ip>:<port> check``). ``balance`` and ``health_checks`` let a can-fail test hand the
    router a configuration that does not balance, or never notices a dead backend."""
    public = plan.router_public_ip
    rule = f"{public.replace('.', '_')}-{LB_PORT}"
    check = f" check inter {HEALTH_CHECK_MS} fall 2 rise 1" if health_checks else ""
    servers = [f"\tserver {rule}_{n} {ip}:{BACKEND_PORT}{check}" for n, ip in enumerate(plan.backend_ips)]
    return "\n".join([
        "global",
        "\tlog 127.0.0.1:3914 local0 warning",
        "\tmaxconn 4096",
        "\tdaemon",
        "",
        "defaults",
        "\tlog global",
        "\tmode tcp",
        "\toption dontlognull",
        "\tretries 3",
        "\ttimeout connect 5s",
        "\ttimeout check 1s",
        "\ttimeout client 50s",
        "\ttimeout server 50s",
        "",
        f"listen {rule}",
        f"\tbind {public}:{LB_PORT}",
        f"\tbalance {balance}",
        *servers,
        "",
    ])  # fmt: skip


def blocked_destination(plan: netlab.LabPlan) -> str:
    """The egress rule's destination: the public server's site address (10.2.2.1, routed via the public
    gateway like any other destination); the server's own address stays allowed."""
    return plan.site_ip


def router_rules(plan: netlab.LabPlan, without: Collection[str] = ()) -> dict[str, str]:
    """``{"nat": ..., "filter": ...}``: iptables-restore input for the router. The nat table is replaced
    whole (``iptables-restore``); the filter text declares CloudStack's egress chains, flushes FORWARD and
    fills it (``iptables-restore --noflush``: INPUT and the policies stay as the boot left them).
    ``without``: rule groups (of :data:`RULE_GROUPS`) to leave out."""
    unknown = sorted(set(without) - set(RULE_GROUPS))
    if unknown:
        raise ValueError(f"unknown rule groups {unknown}: use {', '.join(RULE_GROUPS)}")
    public = plan.router_public_ip
    web1 = plan.backend_ips[0]
    g, p = GUEST_DEV, PUBLIC_DEV
    nat: list[tuple[str, str]] = [
        ("dnat", f"-A PREROUTING -d {public}/32 -i {p} -p tcp -m tcp --dport {FORWARD_PORT} "
                 f"-j DNAT --to-destination {web1}:{BACKEND_PORT}"),
        ("snat", f"-A POSTROUTING -s {plan.guest_cidr} -o {p} -j SNAT --to-source {public}"),
    ]  # fmt: skip
    filt: list[tuple[str, str]] = [
        ("forward", "-F FORWARD"),
        ("forward", "-F FW_OUTBOUND"),
        ("forward", "-F FW_EGRESS_RULES"),
        ("forward", f"-A FORWARD -i {p} -o {g} -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("dnat-forward", f"-A FORWARD -i {p} -o {g} -d {web1}/32 -p tcp -m tcp --dport {BACKEND_PORT} "
                         "-m state --state NEW -j ACCEPT"),
        ("forward", f"-A FORWARD -i {g} -o {p} -j FW_OUTBOUND"),
        ("forward", "-A FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ("forward", "-A FW_OUTBOUND -j FW_EGRESS_RULES"),
        ("egress", f"-A FW_EGRESS_RULES -d {blocked_destination(plan)}/32 -j DROP"),
        ("forward", "-A FW_EGRESS_RULES -j ACCEPT"),
        ("lb-input", f"-A INPUT -d {public}/32 -i {p} -p tcp -m tcp --dport {LB_PORT} "
                     "-m state --state NEW -j ACCEPT"),
    ]  # fmt: skip
    nat_head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                ":POSTROUTING ACCEPT [0:0]"]  # fmt: skip
    filter_head = ["*filter", ":FW_OUTBOUND - [0:0]", ":FW_EGRESS_RULES - [0:0]"]
    keep = set(RULE_GROUPS) - set(without)
    return {
        "nat": "\n".join([*nat_head, *(r for grp, r in nat if grp in keep), "COMMIT", ""]),
        "filter": "\n".join([*filter_head, *(r for grp, r in filt if grp in keep), "COMMIT", ""]),
    }


def rule_commands(rules: dict[str, str]) -> list[str]:
    """The shell commands that load :func:`router_rules` on the router, as CsNetfilter loads its tables:
    nat replaced whole, filter without flushing (INPUT and the policies stay as the boot left them)."""
    return [
        f"printf %s {shlex.quote(rules['nat'])} | iptables-restore",
        f"printf %s {shlex.quote(rules['filter'])} | iptables-restore --noflush",
    ]


# --------------------------------------------------------------------------------- site-to-site VPN

VPN_PSK = "lab-site-to-site-psk"
# The IKE versions and proposals CloudStack's customer gateways offer by default (``ike_policy`` /
# ``esp_policy`` as ``cipher-hash;group``, turned into strongSwan's ``cipher-hash-group``), one tunnel each.
VPN_TUNNELS = {"ikev1": "aes128-sha1;modp1536", "ikev2": "aes256-sha256;modp2048"}
# How swanctl names each tunnel's IKE proposal once negotiated (what the peer must hold).
VPN_IKE_SA = {
    "ikev1": "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1536",
    "ikev2": "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
}
VPN_MARK_OUT, VPN_MARK_IN = "0x525", "0x524"  # CsSite2SiteVpn's marks for the tunnel's two directions
IPSEC_CONF = "config setup\n\ninclude /etc/ipsec.d/*.conf\n"  # CloudStack's /etc/ipsec.conf
IPSEC_SECRETS = "include /etc/ipsec.d/ipsec.*.secrets\n"  # and its /etc/ipsec.secrets


def vpn_peer() -> labservices.IpsecPeer:
    """The lab's peer: a responder for either IKE version, offering every tunnel's proposal."""
    proposals = ",".join(policy.replace(";", "-") for policy in VPN_TUNNELS.values())
    return labservices.IpsecPeer(psk=VPN_PSK, ike_proposals=proposals, esp_proposals=proposals, ike_version=0)


def vpn_connection(plan: netlab.LabPlan) -> str:
    """The connection's name on the router: CsSite2SiteVpn names it after the peer's address."""
    return f"vpn-{plan.server_ip}"


def ipsec_files(plan: netlab.LabPlan, version: str, psk: str = VPN_PSK) -> dict[str, str]:
    """What CsSite2SiteVpn and CloudStack's /etc files give strongSwan for one tunnel (path -> text): the
    include lines, the ``conn`` (IKE ``version``, its default proposal, PSK, UDP-encapsulated ESP as the
    gateway's ``encap`` option asks, started as soon as it is loaded) and its secret."""
    if version not in VPN_TUNNELS:
        raise ValueError(f"unknown IKE version {version!r}: use {', '.join(VPN_TUNNELS)}")
    policy = VPN_TUNNELS[version].replace(";", "-")
    name = vpn_connection(plan)
    conn = [
        f"#conn for {name}", f"conn {name}",
        f" left={plan.router_public_ip}", f" leftsubnet={plan.guest_cidr}",
        f" right={plan.server_ip}", f" rightsubnet={plan.site_cidr}", " type=tunnel", " authby=secret",
        f" keyexchange={version}", f" ike={policy}", " ikelifetime=24h", f" esp={policy}", " lifetime=1h",
        " keyingtries=%forever", " auto=start", " closeaction=restart", " inactivity=0", " forceencaps=yes",
        "",
    ]  # fmt: skip
    return {
        "/etc/ipsec.conf": IPSEC_CONF,
        "/etc/ipsec.secrets": IPSEC_SECRETS,
        f"/etc/ipsec.d/ipsec.{name}.conf": "\n".join(conn),
        f"/etc/ipsec.d/ipsec.{name}.secrets": f'{plan.router_public_ip} {plan.server_ip} : PSK "{psk}"\n',
    }


def vpn_rules(plan: netlab.LabPlan, without: Collection[str] = ()) -> list[str]:
    """iptables commands for the tunnel, in CsSite2SiteVpn's shape, each put in front of its chain: INPUT
    accepts IKE (500), NAT-T (4500) and ESP from the peer; mangle marks the tunnel's traffic and nat's
    POSTROUTING accepts the marked packets before the source NAT rule (NATed, they would leave in clear).
    ``without``: groups of :data:`VPN_RULE_GROUPS` to leave out."""
    unknown = sorted(set(without) - set(VPN_RULE_GROUPS))
    if unknown:
        raise ValueError(f"unknown VPN rule groups {unknown}: use {', '.join(VPN_RULE_GROUPS)}")
    p, local, peer = PUBLIC_DEV, plan.router_public_ip, plan.server_ip
    guest, site = plan.guest_cidr, plan.site_cidr
    rules = [
        ("vpn-input", f"iptables -I INPUT -i {p} -p udp -m udp --dport 500 -s {peer} -d {local} -j ACCEPT"),
        ("vpn-input", f"iptables -I INPUT -i {p} -p udp -m udp --dport 4500 -s {peer} -d {local} -j ACCEPT"),
        ("vpn-input", f"iptables -I INPUT -i {p} -p esp -s {peer} -d {local} -j ACCEPT"),
        ("vpn-nat-exempt", f"iptables -t nat -I POSTROUTING -o {p} -m mark --mark {VPN_MARK_OUT} -j ACCEPT"),
        ("vpn-nat-exempt", f"iptables -t mangle -I FORWARD -s {guest} -d {site} "
                           f"-j MARK --set-xmark {VPN_MARK_OUT}/0xffffffff"),
        ("vpn-nat-exempt", f"iptables -t mangle -A OUTPUT -s {guest} -d {site} "
                           f"-j MARK --set-xmark {VPN_MARK_OUT}/0xffffffff"),
        ("vpn-nat-exempt", f"iptables -t mangle -I FORWARD -s {site} -d {guest} "
                           f"-j MARK --set-xmark {VPN_MARK_IN}/0xffffffff"),
        ("vpn-nat-exempt", f"iptables -t mangle -A INPUT -s {site} -d {guest} "
                           f"-j MARK --set-xmark {VPN_MARK_IN}/0xffffffff"),
    ]  # fmt: skip
    return [rule for group, rule in rules if group not in without]


def vpn_up_commands(plan: netlab.LabPlan, version: str, psk: str = VPN_PSK) -> list[str]:
    """The tunnel's files written (the secrets 0400), ``ipsec rereadsecrets`` (a reload leaves the secrets
    charon read at its start) and ``ipsec reload``: with ``auto=start`` charon then brings the tunnel up by
    itself, as on a router the management server configured."""
    commands = ["mkdir -p /etc/ipsec.d"]
    for path, text in ipsec_files(plan, version, psk).items():
        mode = 0o400 if path.endswith(".secrets") and "/ipsec.d/" in path else 0o644
        commands.append(f"rm -f {path} && printf %s {shlex.quote(text)} > {path} && chmod {mode:o} {path}")
    return [*commands, "ipsec rereadsecrets", "ipsec reload"]


def charon_answers(status: str) -> bool:
    """Whether ``ipsec status`` got its answer from charon. Its exit status tells only that the starter
    runs: charon opens its control socket seconds (on an emulated guest, minutes) later, and until then
    ``ipsec rereadsecrets`` fails with no output."""
    return "Security Associations" in status


def vpn_status_command(plan: netlab.LabPlan) -> str:
    return f"ipsec status {vpn_connection(plan)}"


def vpn_is_up(status: str) -> bool:
    """Whether ``ipsec status <conn>`` shows the IKE SA established and the tunnel's CHILD_SA installed."""
    return "ESTABLISHED" in status and "INSTALLED" in status


@dataclasses.dataclass
class RouterLab:
    """The lab a router boots into, with the services its checks talk to."""

    lab: netlab.NetLab
    public_http: netlab.Service
    backends: list[netlab.Service]
    ipsec_peer: netlab.Service

    def params(self, taps: list[str]) -> dict[str, Any]:
        return lab_params(self, taps)


def lab_params(router_lab: RouterLab, taps: list[str]) -> dict[str, Any]:
    """What the appliance suite is told about the lab (JSON): namespaces, addresses, logs, rules."""
    lab = router_lab.lab
    plan = lab.plan
    return {
        "prefix": lab.prefix,
        "taps": list(taps),
        "netns": {name: lab.netns(name) for name in lab.hosts},
        "switches": {network: lab.switch(network) for network in netlab.NETWORKS},
        "plan": dataclasses.asdict(plan),
        "guest_dev": GUEST_DEV,
        "public_dev": PUBLIC_DEV,
        "public_http": {
            "url": f"http://{plan.server_ip}/",
            "access_log": str(router_lab.public_http.access_log),
        },
        "backends": {s.name: {"ip": s.address, "access_log": str(s.access_log)} for s in router_lab.backends},
        "port_forward": {"public_port": FORWARD_PORT, "backend": "web1", "backend_port": BACKEND_PORT},
        "blocked": blocked_destination(plan),
        "allowed": plan.server_ip,
        "rules": router_rules(plan),
        "load_balancer": lab_params_load_balancer(plan),
        "dhcp": lab_params_dhcp(plan),
        "vpn": lab_params_vpn(router_lab),
    }


def lab_params_vpn(router_lab: RouterLab) -> dict[str, Any]:
    """The site-to-site VPN the checks configure: per IKE version the router's commands, the rules, and
    where the peer's charon answers ``swanctl`` (its namespace and strongswan.conf)."""
    plan = router_lab.lab.plan
    peer = router_lab.ipsec_peer
    return {
        "tunnels": {version: vpn_up_commands(plan, version) for version in VPN_TUNNELS},
        "ike_sa": dict(VPN_IKE_SA),
        "rules": vpn_rules(plan),
        "status": vpn_status_command(plan),
        "files": sorted({path for version in VPN_TUNNELS for path in ipsec_files(plan, version)}),
        "target": plan.tunnel_ip,
        "peer": {"netns": peer.netns, "strongswan_conf": str(peer.files["strongswan.conf"])},
    }


def lab_params_dhcp(plan: netlab.LabPlan) -> dict[str, Any]:
    """The guest network's DHCP and DNS the checks configure: dnsmasq's files and what a client must see."""
    return {
        "files": dnsmasq_files(plan),
        "lease_ip": DHCP_LEASE_IP,
        "gateway": plan.router_guest_ip,
        "resolver": plan.router_guest_ip,
        "dns_name": DNS_NAME,
        "dns_ip": plan.backend_ips[DNS_IP_INDEX],
    }


def lab_params_load_balancer(plan: netlab.LabPlan) -> dict[str, Any]:
    """The load balancer the checks configure: its public port, backends (lab host names), HAProxy's file."""
    return {
        "port": LB_PORT,
        "backends": netlab.backend_names(plan),
        "config": haproxy_config(plan),
        "health_check_ms": HEALTH_CHECK_MS,
    }


@contextlib.contextmanager
def router_lab(prefix: str | None = None) -> Iterator[RouterLab]:
    """The lab (torn down on exit, also on failure or Ctrl-C) with the web backends and the public site."""
    with netlab.net_lab(prefix) as lab:
        backends = labservices.start_web_backends(lab, port=BACKEND_PORT)
        public = labservices.start_public_http(lab)
        peer = labservices.start_ipsec_peer(lab, vpn_peer())
        yield RouterLab(lab, public, backends, peer)


IPERF_SECONDS = 5
VPN_BENCH_WAIT = 300.0  # charon's start, then each tunnel: minutes at worst on an emulated guest


def bench_router(flavour: str, artifact: Path | None = None) -> list[tuple[str, str]]:
    """Rows for ``invoke bench``: a KVM router booted in the lab with the lab's rules (SNAT out of eth2), then
    iperf3 from the guest client to the public server through it (TCP, ``IPERF_SECONDS``), both directions,
    then the site-to-site VPN: strongSwan's start and, per IKE version, ``ipsec reload`` until the guest's
    first request through the tunnel is answered."""
    from systemvm.boot import patch
    from systemvm.boot.harness import boot_system_vm

    rows: list[tuple[str, str]] = []
    with router_lab() as rlab:
        plan = rlab.lab.plan
        labservices.start_iperf3(rlab.lab)
        with boot_system_vm("kvm", flavour, "router", artifact=artifact, lab=rlab, with_patch=False) as vm:
            rows.append(
                (f"{flavour} router: define to SSH on 3922 (in the lab)", f"{vm.timings['ssh']:.1f} s")
            )
            with patch.ssh_session(vm.target.host, vm.target.port, vm.key_file) as client:

                def run(command: str) -> str:
                    status, output = patch.run_command(client, command, timeout=120)
                    if status != 0:
                        raise netlab.LabError(f"{command.split('|')[-1].strip()} failed: {output.strip()}")
                    return output

                for command in rule_commands(router_rules(plan)):
                    run(command)
                for direction, extra in (("guest -> public", ()), ("public -> guest", ("--reverse",))):
                    done = rlab.lab.exec(
                        "client", "iperf3", "--client", plan.server_ip, "--time", str(IPERF_SECONDS),
                        "--json", *extra, timeout=IPERF_SECONDS + 60,
                    )  # fmt: skip
                    bits = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
                    rows.append(
                        (f"{flavour} router: forwarding {direction} (iperf3 TCP)", f"{bits / 1e6:.0f} Mbit/s")
                    )
                rows += _bench_vpn(rlab, flavour, run)
    return rows


def _bench_vpn(rlab: RouterLab, flavour: str, run: Callable[[str], str]) -> list[tuple[str, str]]:
    plan = rlab.lab.plan
    url = f"http://{plan.tunnel_ip}/"
    for rule in vpn_rules(plan):
        run(rule)
    started = time.monotonic()
    run("ipsec start")
    _until(lambda: charon_answers(run("ipsec status || true")), "charon did not answer `ipsec status`")
    rows = [(f"{flavour} router: strongSwan start to answering", f"{time.monotonic() - started:.1f} s")]
    for version in VPN_TUNNELS:
        started = time.monotonic()
        for command in vpn_up_commands(plan, version):
            run(command)

        def through_tunnel() -> bool:
            if not vpn_is_up(run(f"{vpn_status_command(plan)} || true")):
                return False
            return rlab.lab.exec("client", "curl", "-s", "--max-time", "3", url, check=False).returncode == 0

        _until(through_tunnel, f"the {version} tunnel did not carry the guest's request")
        what = f"{flavour} router: IPsec {version} tunnel set-up (reload to first answer through it)"
        rows.append((what, f"{time.monotonic() - started:.1f} s"))
        run(f"ipsec down {vpn_connection(plan)}")
    return rows


def _until(predicate: Callable[[], bool], failure: str, timeout: float = VPN_BENCH_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise netlab.LabError(f"{failure} within {timeout:.0f} s")
        time.sleep(0.5)
