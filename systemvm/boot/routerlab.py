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

Each rule belongs to a named group, so a can-fail test can hand the checks the rules without one
(:func:`router_rules` ``without=``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import shlex
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from systemvm.boot import labservices, netlab

GUEST_DEV, PUBLIC_DEV = "eth0", "eth2"  # CloudStack's router NIC order: guest, control, public
FORWARD_PORT = 8080  # the public port forwarded to web1's port 80
BACKEND_PORT = 80
LB_PORT = 8081  # the load balancer's public port: not one the role's boot firewall opens
RULE_GROUPS = ("forward", "snat", "dnat", "dnat-forward", "egress", "lb-input")
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


@dataclasses.dataclass
class RouterLab:
    """The lab a router boots into, with the services its checks talk to."""

    lab: netlab.NetLab
    public_http: netlab.Service
    backends: list[netlab.Service]

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
        yield RouterLab(lab, public, backends)


IPERF_SECONDS = 5


def bench_router(flavour: str, artifact: Path | None = None) -> list[tuple[str, str]]:
    """Rows for ``invoke bench``: a KVM router booted in the lab with the lab's rules (SNAT out of eth2), then
    iperf3 from the guest client to the public server through it (TCP, ``IPERF_SECONDS``), both directions."""
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
            rules = router_rules(plan)
            with patch.ssh_session(vm.target.host, vm.target.port, vm.key_file) as client:
                for command in (
                    f"printf %s {shlex.quote(rules['nat'])} | iptables-restore",
                    f"printf %s {shlex.quote(rules['filter'])} | iptables-restore --noflush",
                ):
                    status, output = patch.run_command(client, command, timeout=60)
                    if status != 0:
                        raise netlab.LabError(f"{command.split('|')[-1].strip()} failed: {output.strip()}")
            for direction, extra in (("guest -> public", ()), ("public -> guest", ("--reverse",))):
                done = rlab.lab.exec(
                    "client", "iperf3", "--client", plan.server_ip, "--time", str(IPERF_SECONDS), "--json",
                    *extra, timeout=IPERF_SECONDS + 60,
                )  # fmt: skip
                bits = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
                rows.append(
                    (f"{flavour} router: forwarding {direction} (iperf3 TCP)", f"{bits / 1e6:.0f} Mbit/s")
                )
    return rows
