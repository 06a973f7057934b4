"""A router VM inside the network lab: the lab with its services, what the checks are told about it, and what
the lab's management server has CloudStack's router scripts configure on it.

:func:`router_lab` builds the lab (:mod:`systemvm.lab.netlab`) with the web backends on the guest network and
the public HTTP site on the public server; the harness then boots the router with its guest NIC (eth0) and
public NIC (eth2) on the lab's taps and plugs them right after the VM started
(``boot_system_vm(..., lab=lab)``). :func:`lab_params` is the JSON the appliance suite gets as
``params["lab"]``: the namespaces to ``ip netns exec`` into, the addresses, the access logs, and what the
management server configures (never baked into the image).

What is configured is what CloudStack's ``update_config.py`` handlers write for the lab's databags
(:mod:`systemvm.lab.updateconfig`, one function per handler; the rules applied through the model of
CsNetfilter, :mod:`systemvm.lab.csnetfilter`), in the order IpTablesExecutor runs them
(:func:`router_handlers`):

- CsAddress (fw_router for the guest and public addresses, setup_router_control): the base rules, the
  source NAT ``nat POSTROUTING -o eth2 -j SNAT --to-source <public ip>``, the mangle chains that drop new
  connections to the public address unless a firewall rule accepts them;
- CsApache: the router's virtual host on its guest address, apache restarted;
- CsDhcp: the guest network's VM entries (the lab client's static lease, a web backend's name), dnsmasq
  restarted;
- CsAcl: ingress firewall rules for the port forward's and the load balancer's public ports, an egress rule
  that drops one destination (the network's default egress policy allows the rest);
- CsForwardingRules: a port forward ``<public ip>:8080`` -> web1:80 and its FORWARD accept;
- CsLoadBalancer: HAProxy's configuration as the management server renders it (:func:`haproxy_config`,
  a ``listen`` section per rule balancing over web1 and web2, the statistics listener) and the INPUT
  accepts of the rule's and the statistics' ports.

A site-to-site VPN to the lab's strongSwan peer (the public server, with the site network 10.2.2.0/24 behind
it) is configured the way ``CsSite2SiteVpn`` does it: ``/etc/ipsec.d/ipsec.vpn-<peer>.conf`` (one ``conn``,
PSK, ``auto=start``) and its ``.secrets`` (mode 0400) under the ``include`` lines of CloudStack's
/etc/ipsec.conf and /etc/ipsec.secrets, then ``ipsec reload``; its rules (through CsNetfilter) accept IKE,
NAT-T and ESP from the peer and mark the tunnel's traffic so source NAT leaves it alone (:func:`vpn_rules`).

Rules belong to named groups, so a can-fail test can hand the checks the configuration without one
(``params["lab"]["without"]``, :data:`RULE_GROUPS`; the VPN's in ``params["lab"]["vpn"]["without"]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from systemvm.lab import csnetfilter, netlab, services, updateconfig
from systemvm.lab.updateconfig import DhcpEntry, FwRule, HandlerOutput, RouterSettings

GUEST_DEV, PUBLIC_DEV = "eth0", "eth2"  # CloudStack's router NIC order: guest, control, public
FORWARD_PORT = 8080  # the public port forwarded to web1's port 80
BACKEND_PORT = 80
# The load balancer's public port: not one the role's boot firewall opens, nor the management server's
# default HAProxy statistics port (network.loadbalancer.haproxy.stats.port), which the rules open too.
LB_PORT = 8082
LB_STATS_PORT = 8081
LB_STATS_URI, LB_STATS_AUTH = "/admin?stats", "admin1:AdMiN123"  # the management server's defaults
# The groups a can-fail test may leave out: source NAT, the port forward's DNAT and its FORWARD accept,
# the ingress firewall rules of the public ports, the egress rule, the load balancer's INPUT accept.
RULE_GROUPS = ("snat", "dnat", "dnat-forward", "ingress", "egress", "lb-input")
VPN_RULE_GROUPS = ("vpn-input", "vpn-nat-exempt")
HEALTH_CHECK_MS = 2000  # HAProxy's default check interval (the rendering has a bare ``check``); down after 3

# The guest network's VM entries CsDhcp is given: the client's static lease (not its lab address: the offer
# must come from dnsmasq) and web1's name in /etc/hosts, answered by dnsmasq. (lab host, name, address)
DHCP_LEASE_IP = "10.1.1.20"
DHCP_NAME = "client-vm"
DNS_NAME, DNS_IP_INDEX = "web1-vm", 0
EGRESS_RULE_ID = 3


def dhcp_entries(plan: netlab.LabPlan) -> list[dict[str, str]]:
    """The vm_dhcp_entry databags of the guest VMs (JSON: the lab host whose MAC it names, name, address)."""
    return [
        {"host": "client", "host_name": DHCP_NAME, "ipv4_address": DHCP_LEASE_IP},
        {"host": netlab.backend_names(plan)[DNS_IP_INDEX], "host_name": DNS_NAME,
         "ipv4_address": plan.backend_ips[DNS_IP_INDEX]},
    ]  # fmt: skip


def firewall_rules(plan: netlab.LabPlan) -> list[dict[str, Any]]:
    """The firewallrules databag: ingress rules opening the port forward's and the load balancer's public
    ports to everyone (what ``openfirewall`` creates with each rule), the egress rule dropping the blocked
    destination, and the network's default egress rule (policy allow: the default rule accepts)."""
    public = plan.router_public_ip
    ingress = {"traffic_type": "Ingress", "protocol": "tcp", "src_ip": public,
               "source_cidr_list": ["0.0.0.0/0"], "group": "ingress"}  # fmt: skip
    egress = {"traffic_type": "Egress", "src_ip": "", "default_egress_policy": True}
    return [
        {**ingress, "id": 1, "src_port_range": [FORWARD_PORT, FORWARD_PORT]},
        {**ingress, "id": 2, "src_port_range": [LB_PORT, LB_PORT]},
        {**egress, "id": EGRESS_RULE_ID, "protocol": "all", "source_cidr_list": [plan.guest_cidr],
         "dest_cidr_list": [f"{blocked_destination(plan)}/32"], "group": "egress"},
        {**egress, "id": EGRESS_RULE_ID + 1, "protocol": "all", "source_cidr_list": [], "dest_cidr_list": []},
    ]  # fmt: skip


def forwarding_rules(plan: netlab.LabPlan) -> list[dict[str, str]]:
    """The forwardingrules databag: one port forward, public 8080 to web1's port 80."""
    return [{
        "type": "forward", "protocol": "tcp",
        "public_ip": plan.router_public_ip, "public_ports": f"{FORWARD_PORT}:{FORWARD_PORT}",
        "internal_ip": plan.backend_ips[0], "internal_ports": f"{BACKEND_PORT}:{BACKEND_PORT}",
        "group": "dnat", "forward_group": "dnat-forward",
    }]  # fmt: skip


def haproxy_lines(plan: netlab.LabPlan, balance: str = "roundrobin", health_checks: bool = True) -> list[str]:
    """The ``configuration`` lines of the loadbalancer databag for one load balancer rule,
    ``<public ip>:LB_PORT`` over the web backends, as the management server's HAProxyConfigurator
    (core/src/main/java/com/cloud/network/HAProxyConfigurator.java) renders them with its defaults: the
    global and defaults sections, the statistics listener on the public address (visibility ``global``),
    one ``listen <ip with underscores>-<port>`` with ``bind``, ``balance`` and ``server <rule>_<n>
    <ip>:<port> check``, and its blank ``\\t `` separators. ``balance`` and ``health_checks`` let a
    can-fail test hand the router a rendering that does not balance, or never notices a dead backend."""
    public = plan.router_public_ip
    rule = f"{public.replace('.', '_')}-{LB_PORT}"
    check = " check" if health_checks else ""
    blank = "\t "
    stats = (f"\nlisten stats_on_public\n\tbind {public}:{LB_STATS_PORT}\n\tmode http\n\toption httpclose"
             f"\n\tstats enable\n\tstats uri     {LB_STATS_URI}\n\tstats realm   Haproxy\\ Statistics"
             f"\n\tstats auth    {LB_STATS_AUTH}\n")  # fmt: skip
    return [
        "global", "\tlog 127.0.0.1:3914   local0 warning", "\tmaxconn 4096", "\tmaxpipes 1024",
        "\tchroot /var/lib/haproxy", "\tuser haproxy", "\tgroup haproxy",
        "\tstats socket /run/haproxy/admin.sock", "\tdaemon", "\ttune.ssl.default-dh-param 2048", blank,
        "defaults", "\tlog     global", "\tmode    tcp", "\toption  dontlognull", "\tretries 3",
        "\toption redispatch", "\toption forwardfor", "\toption httpclose", "\ttimeout connect    5000",
        "\ttimeout client     50000", "\ttimeout server     50000",
        stats, blank,
        f"listen {rule}", f"\tbind {public}:{LB_PORT}", f"\tbalance {balance}",
        *(f"\tserver {rule}_{n} {ip}:{BACKEND_PORT}{check}" for n, ip in enumerate(plan.backend_ips)),
        blank, blank,
    ]  # fmt: skip


def haproxy_config(plan: netlab.LabPlan, balance: str = "roundrobin", health_checks: bool = True) -> str:
    """/etc/haproxy/haproxy.cfg as CsLoadBalancer writes the rendering (:func:`haproxy_lines`)."""
    return updateconfig.cs_load_balancer(load_balancer_databag(plan, balance, health_checks)).files[
        updateconfig.HAPROXY_CFG
    ]


def load_balancer_databag(
    plan: netlab.LabPlan, balance: str = "roundrobin", health_checks: bool = True
) -> dict[str, Any]:
    """The loadbalancer databag: the rendering, the rule's ``<ip>:<port>:`` to open and the statistics'
    ``<ip>:<port>:<cidrs>:,`` (the management server's generateFwRules)."""
    public = plan.router_public_ip
    return {"config": [{
        "configuration": haproxy_lines(plan, balance, health_checks),
        "add_rules": [f"{public}:{LB_PORT}:"],
        "remove_rules": [],
        "stat_rules": [f"{public}:{LB_STATS_PORT}:0/0:,"],
        "groups": {"add": "lb-input", "stats": "lb-stats"},
    }]}  # fmt: skip


def blocked_destination(plan: netlab.LabPlan) -> str:
    """The egress rule's destination: the public server's site address (10.2.2.1, routed via the public
    gateway like any other destination); the server's own address stays allowed."""
    return plan.site_ip


def check_groups(without: Collection[str], known: Collection[str] = RULE_GROUPS) -> None:
    unknown = sorted(set(without) - set(known))
    if unknown:
        raise ValueError(f"unknown rule groups {unknown}: use {', '.join(known)}")


def router_handlers(
    plan: netlab.LabPlan,
    settings: RouterSettings,
    macs: Mapping[str, str],
    lab: Mapping[str, Any] | None = None,
    previous: Mapping[str, str | None] | None = None,
) -> list[HandlerOutput]:
    """What CloudStack's handlers do on the lab router for the lab's databags, in the order
    ``update_config.py`` runs them (CsAddress with CsApache, CsDhcp, then IpTablesExecutor's CsAcl,
    CsForwardingRules, CsLoadBalancer). ``macs``: lab host -> its MAC (the DHCP entries name them);
    ``lab``: the suite's lab parameters (their ``load_balancer`` balance and health checks, ``dhcp``
    entries); ``previous``: the router's files before (path -> text, None: missing), which CsDhcp and
    CsLoadBalancer edit or compare with."""
    lab = lab or {}
    previous = previous or {}
    lb = lab.get("load_balancer", {})
    entries = [
        DhcpEntry(macs[e["host"]], e["ipv4_address"], e["host_name"], default_gateway=settings.guest.ip)
        for e in lab.get("dhcp", {}).get("entries", dhcp_entries(plan))
    ]
    return [
        updateconfig.cs_address(settings),
        updateconfig.cs_apache(settings),
        updateconfig.cs_dhcp(settings, entries, previous),
        updateconfig.cs_acl(settings, firewall_rules(plan)),
        updateconfig.cs_forwarding_rules(settings, forwarding_rules(plan)),
        updateconfig.cs_load_balancer(
            load_balancer_databag(plan, lb.get("balance", "roundrobin"), lb.get("health_checks", True)),
            previous.get(updateconfig.HAPROXY_CFG),
        ),
    ]


def router_rules(
    plan: netlab.LabPlan, settings: RouterSettings, without: Collection[str] = ()
) -> list[csnetfilter.Desired]:
    """The rules the lab's handlers hand CsNetfilter (without the groups ``without``)."""
    check_groups(without)
    macs = {h: "00:00:00:00:00:00" for h in [*netlab.backend_names(plan), "client"]}
    return updateconfig.desired_rules(router_handlers(plan, settings, macs), without)


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


def vpn_peer() -> services.IpsecPeer:
    """The lab's peer: a responder for either IKE version, offering every tunnel's proposal."""
    proposals = ",".join(policy.replace(";", "-") for policy in VPN_TUNNELS.values())
    return services.IpsecPeer(psk=VPN_PSK, ike_proposals=proposals, esp_proposals=proposals, ike_version=0)


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


def vpn_databag(plan: netlab.LabPlan) -> dict[str, str]:
    """The site2sitevpn databag item of the lab's tunnel (what CsSite2SiteVpn's rules read of it)."""
    return {
        "local_public_ip": plan.router_public_ip,
        "peer_gateway_ip": plan.server_ip,
        "local_guest_cidr": plan.guest_cidr,
        "peer_guest_cidr_list": plan.site_cidr,
    }


def vpn_rules(plan: netlab.LabPlan) -> list[FwRule]:
    """The tunnel's rules, CsSite2SiteVpn's (:func:`updateconfig.site2site_vpn_rules` on the public NIC):
    INPUT accepts IKE (500), NAT-T (4500) and ESP from the peer (group ``vpn-input``); mangle marks the
    tunnel's traffic and nat's POSTROUTING accepts the marked packets before the source NAT rule (NATed,
    they would leave in clear; group ``vpn-nat-exempt``)."""
    groups = {"input": "vpn-input", "nat": "vpn-nat-exempt"}
    return updateconfig.site2site_vpn_rules(PUBLIC_DEV, vpn_databag(plan), groups)


def vpn_handlers(plan: netlab.LabPlan, settings: RouterSettings) -> list[HandlerOutput]:
    """What the VPN checks configure before a tunnel: the handlers whose rules the tunnel's traffic crosses
    (CsAddress, CsAcl, CsForwardingRules), and CsSite2SiteVpn's rules; the tunnel's files come per IKE
    version (:func:`vpn_up_commands`)."""
    return [
        updateconfig.cs_address(settings),
        updateconfig.cs_acl(settings, firewall_rules(plan)),
        updateconfig.cs_forwarding_rules(settings, forwarding_rules(plan)),
        HandlerOutput("CsSite2SiteVpn", rules=vpn_rules(plan)),
    ]


def write_commands(files: Mapping[str, str]) -> list[str]:
    """Shell commands that write each file's whole text (what a handler's CsFile.commit leaves), keeping
    an existing file's mode and owner."""
    return [f"printf %s {shlex.quote(text)} > {shlex.quote(path)}" for path, text in files.items()]


def vpn_up_commands(plan: netlab.LabPlan, version: str, psk: str = VPN_PSK) -> list[str]:
    """CsSite2SiteVpn's file side for one tunnel (:func:`updateconfig.cs_site2site_vpn`), after
    CloudStack's /etc/ipsec.conf and /etc/ipsec.secrets (installed with its scripts, not by the handler):
    the files written,
    ``ipsec rereadsecrets`` (a reload leaves the secrets charon read at its start), ``ipsec reload`` and
    the secrets made 0400. strongSwan must be running already (the checks start it and wait for charon);
    with ``auto=start`` charon then brings the tunnel up by itself, as on a router the management server
    configured."""
    files = ipsec_files(plan, version, psk)
    tunnel = {path: text for path, text in files.items() if "/ipsec.d/" in path}
    includes = {path: text for path, text in files.items() if path not in tunnel}
    output = updateconfig.cs_site2site_vpn(PUBLIC_DEV, vpn_databag(plan), tunnel)
    commands = [c for c in output.commands if "systemctl" not in c]
    return ["mkdir -p /etc/ipsec.d", *write_commands(includes), *write_commands(output.files), *commands]


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
    """What the appliance suite is told about the lab (JSON): namespaces, addresses, logs, and the
    databags the checks have the router's handlers apply (``without``: rule groups left out)."""
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
        "without": [],
        "load_balancer": lab_params_load_balancer(plan),
        "dhcp": lab_params_dhcp(plan),
        "vpn": lab_params_vpn(router_lab),
    }


def lab_params_vpn(router_lab: RouterLab) -> dict[str, Any]:
    """The site-to-site VPN the checks configure: per IKE version the router's commands, the rule groups
    left out (``without``), and where the peer's charon answers ``swanctl`` (its namespace and
    strongswan.conf)."""
    plan = router_lab.lab.plan
    peer = router_lab.ipsec_peer
    return {
        "tunnels": {version: vpn_up_commands(plan, version) for version in VPN_TUNNELS},
        "ike_sa": dict(VPN_IKE_SA),
        "without": [],
        "status": vpn_status_command(plan),
        "files": sorted({path for version in VPN_TUNNELS for path in ipsec_files(plan, version)}),
        "target": plan.tunnel_ip,
        "peer": {"netns": peer.netns, "strongswan_conf": str(peer.files["strongswan.conf"])},
    }


def lab_params_dhcp(plan: netlab.LabPlan) -> dict[str, Any]:
    """The guest network's DHCP and DNS the checks configure: CsDhcp's VM entries (each naming the lab
    host whose MAC it carries) and what a client must be offered (the resolvers and the domain come from
    the command line, :func:`dhcp_expectations`)."""
    return {
        "entries": dhcp_entries(plan),
        "lease_ip": DHCP_LEASE_IP,
        "gateway": plan.router_guest_ip,
        "resolver": plan.router_guest_ip,
        "dns_name": DNS_NAME,
        "dns_ip": plan.backend_ips[DNS_IP_INDEX],
    }


def dhcp_expectations(settings: RouterSettings) -> dict[str, Any]:
    """What CsDhcp's cloud.conf offers a guest besides its lease: the DNS list (CsConfig.get_dns) and the
    domain guest names are answered in (dnsmasq's ``domain=``, from the same command line)."""
    return {"resolvers": settings.guest_dns(), "domain": settings.domain}


def lab_params_load_balancer(plan: netlab.LabPlan) -> dict[str, Any]:
    """The load balancer the checks configure: its public port, backends (lab host names), and how the
    management server renders it (``balance``, ``health_checks``: :func:`haproxy_lines`)."""
    return {
        "port": LB_PORT,
        "stats_port": LB_STATS_PORT,
        "backends": netlab.backend_names(plan),
        "balance": "roundrobin",
        "health_checks": True,
        "health_check_ms": HEALTH_CHECK_MS,
    }


def plan_of(lab: Mapping[str, Any]) -> netlab.LabPlan:
    """The lab's plan from its parameters (JSON lists back to tuples)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in lab["plan"].items()}
    return netlab.LabPlan(**fields)


@contextlib.contextmanager
def router_lab(prefix: str | None = None) -> Iterator[RouterLab]:
    """The lab (torn down on exit, also on failure or Ctrl-C) with the web backends and the public site."""
    with netlab.net_lab(prefix) as lab:
        backends = services.start_web_backends(lab, port=BACKEND_PORT)
        public = services.start_public_http(lab)
        peer = services.start_ipsec_peer(lab, vpn_peer())
        yield RouterLab(lab, public, backends, peer)
