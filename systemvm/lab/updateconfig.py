"""What CloudStack's router scripts write onto a router when the management server configures it: a model of
the handlers ``update_config.py`` (``configure.py``) runs, one function per handler, each returning exactly
the files the handler writes (path -> text), the commands it runs and the iptables rules it hands
CsNetfilter (CloudStack's ``CsConfig.fw`` entries, compared and applied by :mod:`systemvm.lab.csnetfilter`).

Facts from apache/cloudstack ``systemvm/debian/opt/cloud/bin/`` (the research notes
cs-420-router-facts.md, sections 6-9): ``cs/CsAddress.py`` (fw_router, setup_router_control, set_mark),
``cs/CsApp.py`` (CsApache), ``cs/CsDhcp.py`` with ``cs/CsFile.py``, ``cs/CsGuestNetwork.py`` and
``cs/CsConfig.py`` (get_dns), ``configure.py`` (CsAcl, CsForwardingRules, CsSite2SiteVpn, IpTablesExecutor),
``cs/CsLoadBalancer.py``. The texts are our own; the rules are CloudStack's, spelled as its handlers spell
them (their spacing included: CsNetfilter's parse depends on it).

The template's share is not modelled here: /etc/dnsmasq.conf (setup_dnsmasq), apache's emptied sites, the
base rules in /etc/iptables/iptables-<role> come from the image's boot, as CloudStack's own boot provides
them; these handlers only ever write what CloudStack's would on top.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from systemvm import contract
from systemvm.lab import csnetfilter

DEFAULT_DOMAIN = "cloudnine.internal"  # CsCmdLine.get_domain / CsGuestNetwork.get_domain without one

# CsDhcp's files
DHCP_LEASES = "/var/lib/misc/dnsmasq.leases"
DHCP_HOSTS = "/etc/dhcphosts.txt"
DHCP_OPTS = "/etc/dhcpopts.txt"
DHCP_CLOUD_CONF = "/etc/dnsmasq.d/cloud.conf"
ETC_HOSTS = "/etc/hosts"
# CsLoadBalancer's files
HAPROXY_NEW = "/etc/haproxy/haproxy.cfg.new"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
# What CsDhcp and CsLoadBalancer read before they edit or compare (the router's copies to hand them)
PREVIOUS_FILES = (DHCP_CLOUD_CONF, DHCP_HOSTS, DHCP_OPTS, DHCP_LEASES, ETC_HOSTS, HAPROXY_CFG)
# CsApache's virtual host for a guest address
APACHE_VHOST = "/etc/apache2/sites-enabled/vhost-{ip}.conf"


@dataclasses.dataclass(frozen=True)
class FwRule:
    """One entry of CloudStack's ``CsConfig.fw`` (``[table, position, rule]``) and the lab's name for the
    feature it belongs to (``group``: a can-fail test hands the router the rules without one group)."""

    table: str
    position: csnetfilter.Position
    rule: str
    group: str = "base"

    def desired(self) -> csnetfilter.Desired:
        return (self.table, self.position, self.rule)


@dataclasses.dataclass
class HandlerOutput:
    """What one handler does on the router: ``files`` written (path -> whole text), ``commands`` run in
    order (their failures only logged, as CloudStack's CsHelper does), ``rules`` handed to CsNetfilter,
    ``services`` it (re)starts (what the lab restores afterwards)."""

    handler: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    commands: list[str] = dataclasses.field(default_factory=list)
    rules: list[FwRule] = dataclasses.field(default_factory=list)
    services: tuple[str, ...] = ()


def desired_rules(outputs: Iterable[HandlerOutput], without: Iterable[str] = ()) -> list[csnetfilter.Desired]:
    """The rules the handlers hand CsNetfilter, in their order, without the rules of the groups
    ``without``."""
    left_out = set(without)
    return [r.desired() for o in outputs for r in o.rules if r.group not in left_out]


# ------------------------------------------------------------------------------------------ the databags


@dataclasses.dataclass(frozen=True)
class Interface:
    """One address of the ips databag (what merge.py builds from cmd_line.json for a router: eth0 guest,
    eth1 control, eth2 public; cs_ip.py adds the network)."""

    device: str
    ip: str
    netmask: str
    nw_type: str
    gateway: str = ""

    @property
    def network(self) -> str:
        return ipaddress.ip_network(f"{self.ip}/{self.netmask}", strict=False).compressed

    def contains(self, ip: str) -> bool:
        """CsInterface.ip_in_subnet."""
        return ipaddress.ip_address(ip) in ipaddress.ip_network(self.network)


@dataclasses.dataclass(frozen=True)
class RouterSettings:
    """What the handlers read from the command line (cmd_line.json) and the ips databag of a plain router."""

    role: str
    name: str
    domain: str
    interfaces: tuple[Interface, ...]
    dns: tuple[str, ...] = ()  # dns1, dns2
    use_extdns: bool = False

    @classmethod
    def from_cmdline(cls, cmdline: str | Mapping[str, str]) -> RouterSettings:
        args = contract.parse_cmdline(cmdline) if isinstance(cmdline, str) else dict(cmdline)
        kinds = {"eth0": "guest", "eth1": "control", "eth2": "public"}  # merge.py's router layout
        interfaces = tuple(
            Interface(dev, args[f"{dev}ip"], args[f"{dev}mask"], kind,
                      args.get("gateway", "") if kind == "public" else args.get("localgw", ""))
            for dev, kind in kinds.items() if args.get(f"{dev}ip")
        )  # fmt: skip
        return cls(
            role=args.get("type", "router"),
            name=args.get("name", ""),
            domain=args.get("domain") or DEFAULT_DOMAIN,
            interfaces=interfaces,
            dns=tuple(args[k] for k in ("dns1", "dns2") if args.get(k)),
            use_extdns=args.get("useextdns", "false") == "true",
        )

    def interface(self, nw_type: str) -> Interface:
        return next(i for i in self.interfaces if i.nw_type == nw_type)

    @property
    def guest(self) -> Interface:
        return self.interface("guest")

    @property
    def public(self) -> Interface:
        return self.interface("public")

    def by_ip(self, ip: str) -> Interface:
        """The interface whose network holds ``ip`` (CsForwardingRules.getDeviceByIp and friends)."""
        return next(i for i in self.interfaces if i.contains(ip))

    def guest_dns(self) -> list[str]:
        """CsConfig.get_dns for a plain router (no guestnetwork databag): the guest address, unless the
        command line says ``useextdns=true``, then dns1 and dns2."""
        return ([] if self.use_extdns else [self.guest.ip]) + list(self.dns)


# ------------------------------------------------------------------------------------------ CsAddress


ESTABLISHED = "-m state --state RELATED,ESTABLISHED -j ACCEPT"
NEW = "-m state --state NEW -j ACCEPT"


def _mark(device: str) -> str:
    """The connection mark CsAddress and CsForwardingRules give a device (0x64 + its number)."""
    return hex(100 + int(device[3:]))


def fw_router(settings: RouterSettings, iface: Interface) -> list[FwRule]:
    """The rules ``CsIP.fw_router`` (cs/CsAddress.py, non-VPC) adds for one address, in its order."""
    dev = iface.device
    rules = [
        FwRule("mangle", "front", "-A PREROUTING -m state --state RELATED,ESTABLISHED "
                                  "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
        FwRule("mangle", "front", "-A POSTROUTING -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill"),
    ]  # fmt: skip
    if iface.nw_type == "public":
        ip = iface.ip
        rules += [
            FwRule("mangle", "front", f"-A PREROUTING -d {ip}/32 -j VPN_{ip}"),
            FwRule("mangle", "front", f"-A PREROUTING -d {ip}/32 -j FIREWALL_{ip}"),
            FwRule("mangle", "front", f"-A FIREWALL_{ip} -m state --state RELATED,ESTABLISHED -j ACCEPT"),
            FwRule("mangle", "", f"-A FIREWALL_{ip} -j DROP"),
            FwRule("mangle", "", f"-I VPN_{ip} -m state --state RELATED,ESTABLISHED -j ACCEPT"),
            FwRule("mangle", "", f"-A VPN_{ip} -j RETURN"),
            # the source NAT: the command line's eth2ip, every guest's traffic out of the public NIC
            FwRule("nat", "", f"-A POSTROUTING -o {dev} -j SNAT --to-source {settings.public.ip}", "snat"),
            FwRule("mangle", "", f"-A PREROUTING -i {dev} -m state --state NEW "
                                 f"-j CONNMARK --set-xmark {_mark(dev)}/0xffffffff"),
            FwRule("filter", "", f"-A FORWARD -i {dev} -o eth0 {ESTABLISHED}"),
            FwRule("filter", "", f"-A FORWARD -i eth0 -o {dev} -j FW_OUTBOUND"),
        ]  # fmt: skip
    rules += [
        FwRule("filter", "", "-A INPUT -d 224.0.0.18/32 -j ACCEPT"),
        FwRule("filter", "", "-A INPUT -d 225.0.0.50/32 -j ACCEPT"),
        FwRule("filter", "", f"-A INPUT -i {dev} -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        FwRule("filter", "", "-A INPUT -p icmp -j ACCEPT"),
        FwRule("filter", "", "-A INPUT -i lo -j ACCEPT"),
    ]
    if iface.nw_type == "guest":
        cidr = iface.network
        rules += [
            FwRule("filter", "", f"-A INPUT -i {dev} -p udp -m udp --dport 67 -j ACCEPT"),
            FwRule("filter", "", f"-A INPUT -i {dev} -p udp -m udp --dport 53 -s {cidr} -j ACCEPT"),
            FwRule("filter", "", f"-A INPUT -i {dev} -p tcp -m tcp --dport 53 -s {cidr} -j ACCEPT"),
            FwRule("filter", "", f"-A INPUT -i {dev} -p tcp -m tcp --dport 80 -s {cidr} {NEW}"),
            FwRule("filter", "", f"-A INPUT -i {dev} -p tcp -m tcp --dport 8080 -s {cidr} {NEW}"),
            FwRule("filter", "", f"-A FORWARD -i {dev} -o eth1 {ESTABLISHED}"),
            FwRule("filter", "", f"-A FORWARD -i {dev} -o {dev} -m state --state NEW -j ACCEPT"),
            FwRule("filter", "", "-A FORWARD -i eth0 -o eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        ]  # fmt: skip
    rules += [
        FwRule("", "front", "-A FORWARD -j NETWORK_STATS"),
        FwRule("", "front", "-A INPUT -j NETWORK_STATS"),
        FwRule("", "front", "-A OUTPUT -j NETWORK_STATS"),
        FwRule("", "", "-A NETWORK_STATS -i eth0 -o eth2"),
        FwRule("", "", "-A NETWORK_STATS -i eth2 -o eth0"),
        FwRule("", "", "-A NETWORK_STATS -o eth2 ! -i eth0 -p tcp"),
        FwRule("", "", "-A NETWORK_STATS -i eth2 ! -o eth0 -p tcp"),
    ]
    return rules


def setup_router_control() -> list[FwRule]:
    """``CsIP.setup_router_control`` (non-VPC), added after every address: the egress chain's replies,
    SSH on the control NIC, and the two policies (which CsNetfilter runs as ``iptables -t filter -P ...``:
    their text has no ``-A``, so no current rule ever equals them)."""
    return [
        FwRule("filter", "", "-A FW_OUTBOUND -m state --state RELATED,ESTABLISHED -j ACCEPT"),
        FwRule("filter", "", f"-A INPUT -i eth1 -p tcp -m tcp --dport {contract.SSH_PORT} "
                             "-m state --state NEW,ESTABLISHED -j ACCEPT"),
        FwRule("filter", "", "-P INPUT DROP"),
        FwRule("filter", "", "-P FORWARD DROP"),
    ]  # fmt: skip


def cs_address(settings: RouterSettings) -> HandlerOutput:
    """``CsAddress.process`` (cs/CsAddress.py) for the router's addresses, in device order: each guest and
    public address gets ``post_configure`` (a public one ``set_mark`` first, then ``fw_router``), every
    address ``setup_router_control``. Its files and commands (routes, ``ip rule``, rps, arping, the
    password server) are not the lab's business; CsApache, which CsAddress calls for the guest address, is
    :func:`cs_apache`."""
    rules: list[FwRule] = []
    for iface in sorted(settings.interfaces, key=lambda i: i.device):
        if iface.nw_type == "public":
            mark = f"{_mark(iface.device)}/0xffffffff"
            rule = f"-A PREROUTING -i {iface.device} -m state --state NEW -j CONNMARK --set-xmark {mark}"
            rules.append(FwRule("mangle", "", rule))
        if iface.nw_type != "control":
            rules += fw_router(settings, iface)
        rules += setup_router_control()
    return HandlerOutput("CsAddress", rules=rules)


# ------------------------------------------------------------------------------------------ CsApache


def apache_vhost(ip: str, server_name: str) -> str:
    """The router's virtual host for its guest address, in the shape CsApache leaves CloudStack's
    vhost.template (etc/apache2/vhost.template) after its edits: ``<VirtualHost <ip>:80>`` serving
    /var/www/html, the TLS twin on 443 inside ``<IfModule mod_ssl.c>`` (a tab before it, as CsApache
    writes it) with the snakeoil pair, ``ServerName`` in both, and the ``Listen`` lines (443 once for
    mod_ssl, once for mod_gnutls). Our own text: CloudStack's comments, aliases and cipher list are left
    out."""
    site = [
        "\tServerAdmin webmaster@localhost",
        "\tDocumentRoot /var/www/html",
        f"\tServerName {server_name}",
        "\t<Directory />",
        "\t\tOptions FollowSymLinks",
        "\t\tAllowOverride None",
        "\t</Directory>",
        "\t<Directory /var/www/html>",
        "\t\tOptions Indexes FollowSymLinks MultiViews",
        "\t\tAllowOverride All",
        "\t\tOrder allow,deny",
        "\t\tAllow from all",
        "\t</Directory>",
        "\tScriptAlias /cgi-bin/ /usr/lib/cgi-bin/",
        '\t<Directory "/usr/lib/cgi-bin">',
        "\t\tAllowOverride None",
        "\t\tOptions +ExecCGI -MultiViews +SymLinksIfOwnerMatch",
        "\t\tOrder allow,deny",
        "\t\tAllow from all",
        "\t</Directory>",
        "\tErrorLog ${APACHE_LOG_DIR}/error.log",
        "\tLogLevel warn",
    ]
    return "\n".join([
        f"<VirtualHost {ip}:80>",
        *site,
        "\tCustomLog ${APACHE_LOG_DIR}/access.log combined",
        "\tIncludeOptional /etc/apache2/cors.conf",
        "</VirtualHost>",
        "",
        "<IfModule mod_ssl.c>",
        f"\t<VirtualHost {ip}:443>",
        *site,
        "\tCustomLog ${APACHE_LOG_DIR}/ssl_access.log combined",
        "\tIncludeOptional /etc/apache2/cors.conf",
        "\tSSLEngine on",
        "\tSSLProtocol TLSv1.2",
        "\tSSLCertificateFile    /etc/ssl/certs/ssl-cert-snakeoil.pem",
        "\tSSLCertificateKeyFile /etc/ssl/private/ssl-cert-snakeoil.key",
        "</VirtualHost>",
        "</IfModule>",
        "",
        f"Listen {ip}:80",
        "",
        "<IfModule mod_ssl.c>",
        f"    Listen {ip}:443",
        "</IfModule>",
        "",
        "<IfModule mod_gnutls.c>",
        f"    Listen {ip}:443",
        "</IfModule>",
        "",
    ])  # fmt: skip


def cs_apache(settings: RouterSettings) -> HandlerOutput:
    """``CsApache.setup`` (cs/CsApp.py) for the guest address of a plain (not redundant) router:
    sites-enabled/vhost-<ip>.conf (copied from vhost.template when missing, then its VirtualHost and
    Listen lines moved to the guest address, ports 80 and 443, and ``ServerName <type>.<domain>``),
    ``systemctl restart apache2`` (not waited for), and the INPUT accepts of new connections to the
    guest address on 80 and 443, in front."""
    guest = settings.guest
    path = APACHE_VHOST.format(ip=guest.ip)
    rule = f"-A INPUT -i {guest.device} -d {guest.ip}/32 -p tcp -m tcp -m state --state NEW --dport {{}}"
    rule += " -j ACCEPT"
    return HandlerOutput(
        "CsApache",
        files={path: apache_vhost(guest.ip, f"{settings.role}.{settings.domain}")},
        commands=["systemctl restart apache2"],
        rules=[
            FwRule("", "front", rule.format(80), "apache"),
            FwRule("", "front", rule.format(443), "apache"),
        ],
        services=("apache2",),
    )


# ------------------------------------------------------------------------------------------ CsDhcp


class CsFileText:
    """CloudStack's CsFile editing a file's text: ``search`` replaces every non-comment line matching a
    regex (unless the line already holds the replacement) or appends the replacement; ``add`` appends a
    line unless an equal one is there; a file counts as changed when its set of lines changed."""

    def __init__(self, text: str | None) -> None:
        self.old = (text or "").splitlines(keepends=True)
        self.lines = list(self.old)

    def repopulate(self) -> None:
        self.lines = []

    def search(self, pattern: str, replace: str) -> None:
        found = False
        for index, line in enumerate(self.lines):
            if line.lstrip().startswith("#"):
                continue
            if re.search(pattern, line):
                found = True
                if replace not in line:
                    self.lines[index] = replace + "\n"
        if not found:
            self.lines.append(replace + "\n")

    def add(self, line: str) -> None:
        if not any(existing.strip() == line for existing in self.lines):
            self.lines.append(line + "\n")

    def changed(self) -> bool:
        return set(self.old) != set(self.lines)

    def text(self) -> str:
        return "".join(self.lines)


@dataclasses.dataclass(frozen=True)
class DhcpEntry:
    """One item of the dhcpentry databag (VmDhcpConfig: what CsDhcp reads of it)."""

    mac_address: str
    ipv4_address: str
    host_name: str
    default_entry: bool = True
    default_gateway: str = ""
    remove: bool = False


def cs_dhcp(
    settings: RouterSettings, entries: Sequence[DhcpEntry], previous: Mapping[str, str | None] | None = None
) -> HandlerOutput:
    """``CsDhcp.process`` (cs/CsDhcp.py) on a plain router for the guest network's VM entries.

    ``previous``: the router's files before (path -> text, None when missing): cloud.conf and the leases
    file are edited in place (CsFile.search), dhcphosts.txt and dhcpopts.txt rebuilt, /etc/hosts rewritten;
    a file is written only when its lines changed. cloud.conf gets, for the guest device: the static range
    on the guest address tagged ``interface-<dev>-0``, the domain (15), the DNS list (6: the guest address,
    then dns1/dns2), the gateway (3: the entries' default gateway) and the netmask (1), then
    ``listen-address=127.0.0.1,<guest ip>``. dhcphosts.txt holds ``<mac>,<ip>,<name>,infinite`` per VM (a
    second NIC's entry is tagged, with its empty options in dhcpopts.txt); the leases file one
    ``0 <mac> <ip> <name> *`` line per VM; /etc/hosts the preseeded names, ``<guest ip>\\t<name>
    data-server`` and each VM's name. dnsmasq is restarted when cloud.conf, dhcphosts or the leases
    changed (first releasing the leases of MACs no longer in dhcphosts), else started if stopped and
    reloaded."""
    previous = previous or {}
    hosts = preseeded_hosts(settings)
    dhcphosts = CsFileText(previous.get(DHCP_HOSTS))
    dhcpopts = CsFileText(previous.get(DHCP_OPTS))
    conf = CsFileText(previous.get(DHCP_CLOUD_CONF))
    leases = CsFileText(previous.get(DHCP_LEASES))
    dhcphosts.repopulate()
    dhcpopts.repopulate()
    served = add_entries(settings, entries, hosts, dhcphosts, dhcpopts, leases)
    configure_server(settings, served, conf)
    files: dict[str, str] = {}
    restart = False
    for path, edited, restarts in (
        (DHCP_CLOUD_CONF, conf, True),
        (DHCP_HOSTS, dhcphosts, True),
        (DHCP_LEASES, leases, True),
        (DHCP_OPTS, dhcpopts, False),
    ):
        if edited.changed():
            files[path] = edited.text()
            restart = restart or restarts
    commands = release_unknown_leases(dhcphosts, leases, hosts) if restart else []
    etc_hosts = CsFileText(previous.get(ETC_HOSTS))
    etc_hosts.repopulate()
    for host_ip, names in hosts.items():
        etc_hosts.add(f"{host_ip}\t{names}")
    if ETC_HOSTS not in previous or etc_hosts.changed():
        files[ETC_HOSTS] = etc_hosts.text()
    if restart:
        commands.append("systemctl restart dnsmasq")
    else:
        commands += ["systemctl is-active -q dnsmasq || systemctl start dnsmasq", "systemctl reload dnsmasq"]
    return HandlerOutput("CsDhcp", files=files, commands=commands, services=("dnsmasq",))


def preseeded_hosts(settings: RouterSettings) -> dict[str, str]:
    """CsDhcp's preseed of /etc/hosts: localhost, the router's own name, the IPv6 names, and the guest
    address's ``<name> data-server``."""
    return {
        "127.0.0.1": "localhost",
        "127.0.1.1": settings.name,
        "::1": "localhost ip6-localhost ip6-loopback",
        "ff02::1": "ip6-allnodes",
        "ff02::2": "ip6-allrouters",
        settings.guest.ip: f"{settings.name} data-server",
    }


def add_entries(
    settings: RouterSettings,
    entries: Sequence[DhcpEntry],
    hosts: dict[str, str],
    dhcphosts: CsFileText,
    dhcpopts: CsFileText,
    leases: CsFileText,
) -> dict[str, str]:
    """``CsDhcp.add`` for every entry not being removed: its name, its dhcphosts line (a second NIC's
    tagged, with empty options), its lease line; returns device -> the default gateway its entries give."""
    served: dict[str, str] = {}
    for entry in (e for e in entries if not e.remove):
        hosts[entry.ipv4_address] = entry.host_name
        if entry.default_entry:
            dhcphosts.add(f"{entry.mac_address},{entry.ipv4_address},{entry.host_name},infinite")
        else:
            tag = entry.ipv4_address.replace(".", "_")
            dhcphosts.add(f"{entry.mac_address},set:{tag},{entry.ipv4_address},{entry.host_name},infinite")
            for option in (3, 6, 15):
                dhcpopts.add(f"{tag},{option}")
        leases.search(entry.mac_address, f"0 {entry.mac_address} {entry.ipv4_address} {entry.host_name} *")
        address = ipaddress.IPv4Address(entry.ipv4_address)
        for iface in settings.interfaces:
            network = ipaddress.IPv4Network(iface.network)
            if network.network_address < address < network.broadcast_address:
                served[iface.device] = entry.default_gateway
    return served


def configure_server(settings: RouterSettings, served: Mapping[str, str], conf: CsFileText) -> None:
    """``CsDhcp.configure_server``: per served device its tagged range and options (15, 6, 3 unless the
    gateway is 0.0.0.0, 1), then the addresses dnsmasq listens on."""
    listen = ["127.0.0.1"]
    for index, iface in enumerate(i for i in settings.interfaces if i.device in served):
        tag = f"interface-{iface.device}-{index}"
        gateway = served[iface.device]
        conf.search(f"dhcp-range=set:{tag}", f"dhcp-range=set:{tag},{iface.ip},static")
        conf.search(f"dhcp-option=tag:{tag},15", f"dhcp-option=tag:{tag},15,{settings.domain}")
        dns = [d for d in settings.guest_dns() if d]
        if dns:
            conf.search(f"dhcp-option=tag:{tag},6", f"dhcp-option=tag:{tag},6,{','.join(dns)}")
        if gateway != "0.0.0.0":
            conf.search(f"dhcp-option=tag:{tag},3,", f"dhcp-option=tag:{tag},3,{gateway}")
        netmask = ipaddress.ip_network(iface.network).netmask
        conf.search(f"dhcp-option=tag:{tag},1,", f"dhcp-option=tag:{tag},1,{netmask}")
        listen.append(iface.ip)
    conf.search("listen-address=", f"listen-address={','.join(listen)}")


def release_unknown_leases(dhcphosts: CsFileText, leases: CsFileText, hosts: dict[str, str]) -> list[str]:
    """``CsDhcp.delete_leases`` before a restart: what dnsmasq leased to a MAC no longer in dhcphosts is
    released (``dhcp_release``) and its name dropped."""
    known = {line.split(",")[0] for line in dhcphosts.text().splitlines()}
    commands = []
    for lease in leases.text().splitlines():
        fields = lease.split(" ")
        if len(fields) > 2 and fields[1] not in known:
            leased, mac = fields[2], fields[1]
            device = f"$(ip route get {leased} | grep -o 'dev eth[0-9]*' | head -1 | cut -d' ' -f2)"
            commands.append(f'dhcp_release "{device}" {leased} {mac}')
            hosts.pop(leased, None)
    return commands


# ------------------------------------------------------------------------------------------ CsAcl


def acl_egress_flush() -> list[str]:
    """``CsAcl.flushAllowAllEgressRules`` (configure.py), run before every firewall rules pass: the egress
    chain made sure of, emptied, and every ipset flushed and destroyed."""
    return [
        "iptables -t filter -S FW_EGRESS_RULES >/dev/null 2>&1 || iptables -t filter -N FW_EGRESS_RULES",
        "iptables -t filter -F FW_EGRESS_RULES",
        "ipset flush",
        "ipset destroy",
    ]


def cs_acl(settings: RouterSettings, firewall_rules: Sequence[Mapping[str, Any]]) -> HandlerOutput:
    """``CsAcl('firewallrules')`` for a plain router (configure.py, AclIP): the egress flush, then per
    firewallrules item (the management server's FirewallRule: ``id``, ``traffic_type``, ``protocol``,
    ``src_ip``, ``source_cidr_list``, ``dest_cidr_list``, ``src_port_range``, ``default_egress_policy``,
    ``icmp_type``, ``icmp_code``; the rule group in the lab's ``group`` key):

    - ingress: one mangle rule per source CIDR in front of ``FIREWALL_<public ip>`` (whose final DROP
      CsAddress adds), accepting the protocol and ports;
    - egress: ipsets ``sourceCidrIpset-<id>`` and ``destCidrIpset-<id>`` created and filled (a rule for
      all protocols ignores its source list; 0.0.0.0/0 is never added), the jump from FW_OUTBOUND, and
      the rule in FW_EGRESS_RULES: the default rule (all protocols, no source list) appended with the
      network's default policy (ACCEPT when ``default_egress_policy``), any other inserted in front with
      the opposite action."""
    commands = acl_egress_flush()
    rules: list[FwRule] = []
    for item in firewall_rules:
        group = str(item.get("group", "base"))
        protocol = str(item["protocol"])
        ports = item.get("src_port_range")
        icmp = "any"
        if item.get("icmp_type", -1) != -1:
            icmp = str(item["icmp_type"])
        if item.get("icmp_code", -1) != -1:
            icmp = f"{item['icmp_type']}/{item['icmp_code']}"
        port_range = ""
        if ports:
            first, last = ports
            port_range = f" --dport {first} " if first == last else f" --dport {first}:{last}"
        sources = [] if protocol == "all" and item.get("source_cidr_list") else list(item["source_cidr_list"])
        if str(item["traffic_type"]) == "Ingress":
            for cidr in sources:
                match = (
                    f" --icmp-type {icmp} -j ACCEPT" if protocol == "icmp" else f"  {port_range} -j ACCEPT"
                )
                rule = f" -A FIREWALL_{item['src_ip']} -s {cidr}  -p {protocol} {match}"
                rules.append(FwRule("mangle", "front", rule, group))
            continue
        rule_id = int(item["id"])
        source_set, dest_set = f"sourceCidrIpset-{rule_id}", f"destCidrIpset-{rule_id}"
        commands += [f"ipset create {source_set} hash:net", f"ipset create {dest_set} hash:net"]
        commands += [f"ipset add {source_set} {cidr}" for cidr in sources]
        dests = [c for c in item.get("dest_cidr_list") or [] if c != "0.0.0.0/0"]
        commands += [f"ipset add {dest_set} {cidr}" for cidr in dests]
        rules.append(FwRule("filter", "", " -A FW_OUTBOUND -j FW_EGRESS_RULES", group))
        policy = bool(item.get("default_egress_policy"))
        if protocol == "all" and not item.get("source_cidr_list"):
            rule, action = " -A FW_EGRESS_RULES", "ACCEPT" if policy else "DROP"
        else:
            rule, action = " -I FW_EGRESS_RULES", "DROP" if policy else "ACCEPT"
        match_sets = ""
        if sources:
            match_sets += f" -m set --match-set {source_set} src "
        if dests:
            match_sets += f" -m set --match-set {dest_set} dst "
        if protocol == "icmp":
            rule += f"{match_sets} -p {protocol}  -m {protocol}  --icmp-type {icmp}"
        elif protocol != "all":
            rule += f"{match_sets} -p {protocol}  -m {protocol}  {port_range}"
        else:
            rule += match_sets
        rules.append(FwRule("filter", "", f"{rule} -j {action}", group))
    return HandlerOutput("CsAcl", commands=commands, rules=rules)


# ------------------------------------------------------------------------------------------ CsForwardingRules


def _ports(ports: str, delimiter: str) -> str:
    """CsForwardingRules.portsToString: ``a:b`` as ``a`` when equal, else joined by ``delimiter``."""
    first, last = ports.split(":", 2)[:2]
    return first if first == last else f"{first}{delimiter}{last}"


def cs_forwarding_rules(settings: RouterSettings, forwards: Sequence[Mapping[str, str]]) -> HandlerOutput:
    """``CsForwardingRules.forward_vr`` (configure.py) per port forward of the forwardingrules databag
    (``public_ip``, ``public_ports``, ``internal_ip``, ``internal_ports``, ``protocol``; the lab's group in
    ``group``, the FORWARD accept in ``forward_group``): nat PREROUTING DNAT on the public and on the
    internal device, OUTPUT DNAT, the hairpin SNAT to the guest address, the mark and its save, and the
    FORWARD accept of the forwarded connections."""
    rules: list[FwRule] = []
    guest_ip = settings.guest.ip  # getGuestIp: the first guest interface's address
    for fwd in forwards:
        group = fwd.get("group", "base")
        public_dev = settings.by_ip(fwd["public_ip"]).device
        mark = f"{_mark(public_dev)}/0xffffffff"
        internal = settings.by_ip(fwd["internal_ip"])
        proto = fwd["protocol"]
        public_ports = _ports(fwd["public_ports"], ":")
        to = f"{fwd['internal_ip']}:{_ports(fwd['internal_ports'], '-')}"
        internal_ports = _ports(fwd["internal_ports"], ":")
        dnat = f"-p {proto} -m {proto} --dport {public_ports} -j DNAT --to-destination {to}"
        rules += [
            FwRule("nat", "", f"-A PREROUTING -d {fwd['public_ip']}/32 -i {public_dev} {dnat}", group),
            FwRule("nat", "", f"-A PREROUTING -d {fwd['public_ip']}/32 -i {internal.device} {dnat}", group),
            FwRule("nat", "", f"-A OUTPUT -d {fwd['public_ip']}/32 {dnat}", group),
            FwRule("nat", "", f"-j SNAT --to-source {guest_ip} -A POSTROUTING -s {internal.network} "
                              f"-d {fwd['internal_ip']}/32 -o {internal.device} -p {proto} -m {proto} "
                              f"--dport {internal_ports}", group),
            FwRule("nat", "", f"-A PREROUTING -d {fwd['public_ip']}/32 -i {public_dev} -p {proto} -m {proto} "
                              f"--dport {public_ports} -j MARK --set-xmark {mark}", group),
            FwRule("nat", "", f"-A PREROUTING -d {fwd['public_ip']}/32 -i {public_dev} -p {proto} -m {proto} "
                              f"--dport {public_ports} -m state --state NEW -j CONNMARK --save-mark "
                              "--nfmask 0xffffffff --ctmask 0xffffffff", group),
            FwRule("filter", "", f"-A FORWARD -i {public_dev} -o {internal.device} -p {proto} -m {proto} "
                                 f"--dport {internal_ports} -m state --state NEW,ESTABLISHED -j ACCEPT",
                   fwd.get("forward_group", group)),
        ]  # fmt: skip
    return HandlerOutput("CsForwardingRules", rules=rules)


# ------------------------------------------------------------------------------------------ CsSite2SiteVpn


def site2site_vpn_rules(
    device: str, vpn: Mapping[str, str], groups: Mapping[str, str] | None = None
) -> list[FwRule]:
    """``CsSite2SiteVpn.configure_iptables`` (configure.py) for one site2sitevpn item (``local_public_ip``,
    ``peer_gateway_ip``, ``local_guest_cidr``, ``peer_guest_cidr_list``) on the public ``device``: IKE,
    NAT-T and ESP from the peer accepted in front of INPUT, nat POSTROUTING accepting the marked tunnel
    traffic in front (before the source NAT), mangle marking it both ways. ``groups``: the lab's group of
    the input rules (``input``) and of the NAT exemption (``nat``)."""
    input_group = (groups or {}).get("input", "base")
    nat_group = (groups or {}).get("nat", "base")
    peer, local = vpn["peer_gateway_ip"], vpn["local_public_ip"]
    guest = vpn["local_guest_cidr"]
    ike = f"-s {peer} -d {local} -j ACCEPT"
    rules = [
        FwRule("", "front", f"-A INPUT -i {device} -p udp -m udp --dport 500 {ike}", input_group),
        FwRule("", "front", f"-A INPUT -i {device} -p udp -m udp --dport 4500 {ike}", input_group),
        FwRule("", "front", f"-A INPUT -i {device} -p esp {ike}", input_group),
        FwRule(
            "nat", "front", f"-A POSTROUTING -t nat -o {device} -m mark --mark 0x525 -j ACCEPT", nat_group
        ),
    ]
    out, back = "-j MARK --set-xmark 0x525/0xffffffff", "-j MARK --set-xmark 0x524/0xffffffff"
    for net in vpn["peer_guest_cidr_list"].strip().split(","):
        rules += [
            FwRule("mangle", "front", f"-A FORWARD -s {guest} -d {net} {out}", nat_group),
            FwRule("mangle", "", f"-A OUTPUT -s {guest} -d {net} {out}", nat_group),
            FwRule("mangle", "front", f"-A FORWARD -s {net} -d {guest} {back}", nat_group),
            FwRule("mangle", "", f"-A INPUT -s {net} -d {guest} {back}", nat_group),
        ]
    return rules


def cs_site2site_vpn(
    device: str,
    vpn: Mapping[str, str],
    files: Mapping[str, str],
    groups: Mapping[str, str] | None = None,
) -> HandlerOutput:
    """``CsSite2SiteVpn.process`` (configure.py) for one tunnel: strongSwan started if it is not running,
    the tunnel's rules (:func:`site2site_vpn_rules` on ``device``, the one holding the local public
    address), its
    ``files`` (/etc/ipsec.d/ipsec.vpn-<peer>.conf and .secrets, as :func:`systemvm.lab.routerlab.ipsec_files`
    renders them), ``ipsec rereadsecrets`` and ``ipsec reload``, the secrets made 0400."""
    secrets = [path for path in files if path.endswith(".secrets") and "/ipsec.d/" in path]
    return HandlerOutput(
        "CsSite2SiteVpn",
        files=dict(files),
        commands=[
            "systemctl is-active -q ipsec || systemctl start ipsec",
            "ipsec rereadsecrets",
            "ipsec reload",
            *(f"chmod 400 {path}" for path in secrets),
        ],
        rules=site2site_vpn_rules(device, vpn, groups),
        services=("ipsec",),
    )


# ------------------------------------------------------------------------------------------ CsLoadBalancer


def lb_rule(entry: str, group: str) -> FwRule:
    """CsLoadBalancer's INPUT accept for one ``<ip>:<port>:...`` entry of the databag's rule lists."""
    ip, port = entry.split(":")[:2]
    return FwRule(
        "filter", "", f"-A INPUT -p tcp -m tcp -d {ip} --dport {port} -m state --state NEW -j ACCEPT", group
    )


def cs_load_balancer(loadbalancer: Mapping[str, Any], previous_cfg: str | None = None) -> HandlerOutput:
    """``CsLoadBalancer.process`` (cs/CsLoadBalancer.py) for the loadbalancer databag's ``config`` item
    (``configuration``: the lines the management server's HAProxy configurator rendered; ``add_rules``,
    ``remove_rules``, ``stat_rules``: ``<ip>:<port>:...`` entries; the lab's groups of the add and stat
    rules in ``groups``): the lines written to haproxy.cfg.new, copied over haproxy.cfg when its lines
    differ from ``previous_cfg`` (then haproxy reloaded when a haproxy started with ``-p /run/haproxy.pid``
    runs, else restarted), and an INPUT accept per added and stats entry. It never runs ``haproxy -c``."""
    config = loadbalancer["config"][0]
    lines = [line for chunk in config["configuration"] for line in chunk.split("\n")]
    text = "".join(f"{line}\n" for line in lines)
    files = {HAPROXY_NEW: text}
    commands = []
    if set(text.splitlines(keepends=True)) != set((previous_cfg or "").splitlines(keepends=True)):
        files[HAPROXY_CFG] = text
        commands.append(
            "if ps -eo args= | awk '$NF == \"/run/haproxy.pid\" {found = 1} END {exit !found}'; "
            "then systemctl reload haproxy; else systemctl restart haproxy; fi"
        )
    groups = config.get("groups", {})
    rules = [lb_rule(e, groups.get("add", "base")) for e in config["add_rules"]]
    for entry in config["remove_rules"]:
        removed = lb_rule(entry, "").rule.replace("-A INPUT", "-D INPUT")
        rules.append(FwRule("filter", "", removed, groups.get("remove", "base")))
    rules += [lb_rule(e, groups.get("stats", "base")) for e in config["stat_rules"]]
    return HandlerOutput("CsLoadBalancer", files=files, commands=commands, rules=rules, services=("haproxy",))
