"""The CloudStack boot contract: command line keys, roles, NIC layout and ports.

Both the image (element systemvm-guest installs this very module beside :mod:`systemvm.guest`) and the
harness follow it, so a key or a NIC position changes in one place. Standard library only: it runs on the
image's python3 too.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import re
from collections.abc import Callable
from typing import Any

SSH_PORT = 3922
AGENT_PORT = 8250
ROLES = ("secstorage", "consoleproxy", "router", "vpcrouter", "dhcpsrvr", "ilbvm", "elbvm")
# The load balancer VMs (internal and elastic): eth0 guest, eth1 control, haproxy only.
LB_ROLES = ("ilbvm", "elbvm")
HYPERVISORS = ("kvm", "xenserver", "vmware", "hyperv")
# The link-local network CloudStack's KVM and Xen hosts give system VMs on their control NIC.
LINK_LOCAL_NET = ipaddress.ip_network("169.254.0.0/16")
LINK_LOCAL_HOST = "169.254.0.1"

# Role -> TCP ports the role opens to the world, besides SSH on the control NIC.
ROLE_PORTS: dict[str, tuple[int, ...]] = {
    # CloudStack's iptables-secstorage opens SSH only: the storage VM's agent opens HTTP(S) at run time.
    "secstorage": (),
    "consoleproxy": (80, 443, 8001, 8080),  # 8001 on eth0 and eth1, the others on eth2 (the public NIC)
    "router": (53, 80),  # on the guest NIC; the metadata server's 80 (DHCP and DNS over UDP below)
    "vpcrouter": (),  # its guest networks arrive later, from JSON data bags, with their rules
    "dhcpsrvr": (53,),
    # CloudStack's iptables-ilbvm/-elbvm open SSH only: the load balancer rules open their own ports later.
    "ilbvm": (),
    "elbvm": (),
}
# The console proxy's own service port on the control and management NICs.
CONSOLE_PROXY_PORT = 8001
# Role -> services the role runs (enabled) and those it must not (disabled).
ROLE_SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "secstorage": (
        ("apache2", "nfs-common", "cloud"),
        ("haproxy", "dnsmasq", "keepalived", "strongswan-starter"),
    ),
    "consoleproxy": (("cloud",), ("apache2", "haproxy", "dnsmasq", "keepalived", "strongswan-starter")),
    "router": (("haproxy", "dnsmasq", "apache2"), ("cloud", "nfs-server")),
    "vpcrouter": (("haproxy", "dnsmasq", "apache2"), ("cloud", "nfs-server")),
    "dhcpsrvr": (("dnsmasq", "apache2"), ("cloud", "haproxy", "nfs-server")),
    "ilbvm": (("haproxy",), ("cloud", "dnsmasq", "conntrackd", "keepalived", "apache2", "nfs-common")),
    "elbvm": (("haproxy",), ("cloud", "dnsmasq", "conntrackd", "keepalived", "apache2", "nfs-common")),
}
AGENT_ROLES = ("secstorage", "consoleproxy")


def control_nic(role: str, hypervisor: str = "kvm", ssh_on_guest: bool = False) -> str:
    """The NIC that carries SSH on 3922 for ``role``, as CloudStack lays NICs out.

    ``ssh_on_guest`` is the command line's ``sshonguest=true``: an elbvm then takes SSH on its guest NIC.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}': use one of {', '.join(ROLES)}")
    if role == "elbvm" and ssh_on_guest:
        return "eth0"
    if role in ("router", "dhcpsrvr", *LB_ROLES):
        return "eth1"  # eth0 is the guest network
    if hypervisor in ("vmware", "hyperv") and role in ("secstorage", "consoleproxy"):
        return "eth1"  # no link-local network there: the management NIC
    return "eth0"


def nic_count(role: str, hypervisor: str = "kvm") -> int:
    """How many NICs the harness gives a VM of ``role`` (control NIC + the ones it needs before it)."""
    if role in LB_ROLES:
        return 2  # guest and control, wherever SSH is
    return 2 if control_nic(role, hypervisor) == "eth1" else 1


@dataclasses.dataclass
class BootArgs:
    """What the harness puts on a system VM's boot command line."""

    role: str
    name: str
    nics: list[tuple[str, str]]  # (ip, netmask) for eth0, eth1, ...
    authorized_key: str  # an OpenSSH public key line
    mgmt_host: str = LINK_LOCAL_HOST
    mgmt_port: int = AGENT_PORT
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    extra: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_cmdline(self) -> str:
        return build_cmdline(self)


def build_cmdline(args: BootArgs) -> str:
    """Render the command line as CloudStack's management server does: space-separated key=value."""
    if args.role not in ROLES:
        raise ValueError(f"unknown role '{args.role}'")
    items: list[tuple[str, str]] = [("template", "domP"), ("type", args.role), ("name", args.name)]
    for index, (ip, mask) in enumerate(args.nics):
        items += [(f"eth{index}ip", ip), (f"eth{index}mask", mask)]
    if args.gateway:
        items.append(("gateway", args.gateway))
    for index, server in enumerate(args.dns, start=1):
        items.append((f"dns{index}", server))
    items += [("host", args.mgmt_host), ("port", str(args.mgmt_port))]
    items.append(("authorized_key", base64.b64encode(args.authorized_key.strip().encode()).decode()))
    items += sorted(args.extra.items())
    for key, value in items:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"command line value for '{key}' must be non-empty and without spaces")
    return " ".join(f"{key}={value}" for key, value in items)


def parse_cmdline(text: str) -> dict[str, str]:
    """Split a command line into key=value pairs; words without '=' are kept with an empty value."""
    result: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        result[key] = value
    return result


def xenstore_value(cmdline: str) -> str:
    """XenServer HVM carries the command line in xenstore with '%' standing for a space."""
    return cmdline.replace(" ", "%")


# --------------------------------------------------------------------------------------------------------
# What the image does with the command line. Pure functions only (stdlib, Python 3.11): the image runs a
# copy of this file from /opt/cloud/lib/, so the harness and the appliance read the contract the same way.
# --------------------------------------------------------------------------------------------------------

CACHE_DIR = "/var/cache/cloud"
CMDLINE_PATH = f"{CACHE_DIR}/cmdline"
OVERRIDE_PATH = "/mnt/cmdline"
BOOT_DONE_PATH = f"{CACHE_DIR}/boot_up_done"
ENABLED_SVCS_PATH = f"{CACHE_DIR}/enabled_svcs"
DISABLED_SVCS_PATH = f"{CACHE_DIR}/disabled_svcs"
SCRIPTS_SIGNATURE_PATH = f"{CACHE_DIR}/cloud-scripts-signature"
# The template keeps the scripts it was given here (CloudStack's build and live patch put them there too).
SCRIPTS_COPY_PATH = "/usr/share/cloud/cloud-scripts.tgz"
# The digest the image's scripts signature uses, md5 (CloudStack 4.20) or sha512 (4.22): written by the
# build from its CloudStack profile (systemvm/profile.py): what its line compares (the image computes none).
SCRIPTS_DIGEST_PATH = "/opt/cloud/lib/SCRIPTS_DIGEST"
# The management server's version handshake and set-up probe (run over SSH; their output is parsed).
TEMPLATE_VERSION_SCRIPT = "/opt/cloud/bin/get_template_version.sh"
PATCHED_SCRIPT = "/opt/cloud/bin/patched.sh"
LIVE_PATCH_SCRIPT = f"{CACHE_DIR}/patch-sysvms.sh"
LIVE_PATCH_LOG = "/var/log/livepatchsystemvm.log"
# The command line as one JSON object, where CloudStack's router scripts (update_config.py) look for it.
CMD_LINE_JSON_PATH = f"{CACHE_DIR}/cmd_line.json"
# CloudStack's persistent configuration directory (the routers' JSON data bags live here).
CLOUDSTACK_CONF_DIR = "/etc/cloudstack"
# Routers forward their guest networks' traffic (CloudStack's sysctl.conf sets net.ipv4.ip_forward = 1).
IP_FORWARD_PATH = "/proc/sys/net/ipv4/ip_forward"
FORWARD_SYSCTL_PATH = "/etc/sysctl.d/60-cloud-role.conf"
PATCH_FILES = ("agent.zip", "cloud-scripts.tgz", "patch-sysvms.sh")
AGENT_DIR = "/usr/local/cloud/systemvm"
AGENT_PROPERTIES = f"{AGENT_DIR}/conf/agent.properties"
RELEASE_PATH = "/etc/cloudstack-release"
CLOUD_LOG = "/var/log/cloud.log"
RULES_V4_PATH = "/etc/iptables/rules.v4"
RULES_V6_PATH = "/etc/iptables/rules.v6"
# KVM: how long the boot waits for the host to write the command line through qemu-guest-agent.
KVM_CMDLINE_WAIT = 60.0
# The command line this boot was configured from (per boot: /run is a tmpfs).
APPLIED_CMDLINE_PATH = "/run/cloud-cmdline.applied"
# When the boot gave up waiting, this path unit keeps listening and configures the VM when the host
# writes the command line later (cloud-late-config.service).
CMDLINE_WATCH_UNIT = "cloud-cmdline-watch.path"
# Xen HVM keeps the command line here; '%' stands for a space.
XENSTORE_KEY = "vm-data/cloudstack/init"
# Role -> UDP ports (DNS and DHCP for the routers).
ROLE_UDP_PORTS: dict[str, tuple[int, ...]] = {
    "secstorage": (),
    "consoleproxy": (),
    "router": (53, 67),
    "vpcrouter": (),
    "dhcpsrvr": (53, 67),
    "ilbvm": (),
    "elbvm": (),
}
# Roles whose service ports face the guest network only (never the control NIC).
GUEST_FACING_ROLES = ("router", "vpcrouter", "dhcpsrvr")
# Every service some role runs: a role disables the ones it does not run.
ROLE_SERVICE_POOL = (
    "apache2", "cloud", "conntrackd", "dnsmasq", "frr", "haproxy", "keepalived", "nfs-common",
    "nfs-server", "radvd", "strongswan-starter", "xl2tpd",
)  # fmt: skip
# What the image leaves disabled until the boot knows the role (elements/systemvm-packages reads it): the
# pool, the other names Debian ships two of its services under (ipsec: strongswan-starter's;
# nfs-kernel-server: nfs-server's), and ipvsadm, which no role enables.
IMAGE_DISABLED_UNITS = (*ROLE_SERVICE_POOL, "ipsec", "nfs-kernel-server", "ipvsadm")
SSH_KEY_TYPES = ("ssh-rsa", "ssh-ed25519", "ssh-dss", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")


@dataclasses.dataclass
class Nic:
    index: int
    ip: str | None = None
    netmask: str | None = None
    mtu: int | None = None
    # bootproto=dhcp: ifupdown asks DHCP for the IPv4 address (ip and netmask stay None)
    dhcp: bool = False
    ip6: str | None = None
    ip6_prefixlen: int | None = None

    @property
    def name(self) -> str:
        return f"eth{self.index}"

    @property
    def interface(self) -> ipaddress.IPv4Interface | None:
        if self.ip is None or self.netmask is None:
            return None
        return ipaddress.IPv4Interface(f"{self.ip}/{self.netmask}")

    @property
    def interface6(self) -> ipaddress.IPv6Interface | None:
        if self.ip6 is None or self.ip6_prefixlen is None:
            return None
        return ipaddress.IPv6Interface(f"{self.ip6}/{self.ip6_prefixlen}")


@dataclasses.dataclass
class BootConfig:
    """The command line, checked. ``problems`` lists what was skipped; ``params`` keeps every key as given."""

    params: dict[str, str] = dataclasses.field(repr=False)  # holds vmpassword: never in a repr
    role: str | None = None
    name: str | None = None
    nics: dict[int, Nic] = dataclasses.field(default_factory=dict)
    gateway: str | None = None
    gateway6: str | None = None  # ip6gateway: the default IPv6 route
    dns: list[str] = dataclasses.field(default_factory=list)
    mtu: int | None = None
    authorized_key: str | None = None
    mgmt_host: str = LINK_LOCAL_HOST  # the first of mgmt_hosts
    mgmt_hosts: list[str] = dataclasses.field(default_factory=lambda: [LINK_LOCAL_HOST])
    mgmt_port: int = AGENT_PORT
    # mgmtcidr is reached through localgw on the NIC whose network holds localgw (the management NIC)
    mgmt_cidr: str | None = None
    local_gateway: str | None = None
    hypervisor: str = "kvm"
    ssh_on_guest: bool = False  # sshonguest=true
    dhcp: bool = False  # bootproto=dhcp
    nic_macs: list[str] = dataclasses.field(default_factory=list)  # ethN has nic_macs[N]
    storage_gateway: str | None = None  # storagegateway: kept for the agent, the boot routes nothing via it
    disable_rp_filter: bool = False
    ntp_servers: list[str] = dataclasses.field(default_factory=list)
    vm_password: str | None = dataclasses.field(default=None, repr=False)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def control_nic(self) -> str:
        """The NIC for SSH on 3922; eth0 when the role is unknown."""
        return control_nic(self.role, self.hypervisor, self.ssh_on_guest) if self.role else "eth0"

    @property
    def control_ip(self) -> str | None:
        nic = self.nics.get(int(self.control_nic[3:]))
        return nic.ip if nic else None


def _ipv4(value: str) -> str:
    return str(ipaddress.IPv4Address(value))


def _netmask(value: str) -> str:
    # Accept dotted masks and prefix lengths; ip_network checks that the mask is contiguous.
    return str(ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask)


def _mtu(value: str) -> int:
    mtu = int(value)
    if not 68 <= mtu <= 65535:
        raise ValueError(f"{mtu} is outside 68..65535")
    return mtu


def _hostname(value: str) -> str:
    labels = value.split(".")
    if len(value) > 253 or not all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
        for label in labels
    ):
        raise ValueError("not a valid host name")
    return value


def _network(value: str) -> str:
    return str(ipaddress.IPv4Network(value, strict=False))


def _hosts(value: str) -> list[str]:
    """``host=`` is a comma-separated list of management servers (addresses or names), tried in order."""
    hosts = [_hostname(item) for item in value.split(",") if item]
    if not hosts:
        raise ValueError("no management server in the list")
    return hosts


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(f"{port} is not a TCP port")
    return port


def decode_authorized_key(value: str) -> str:
    """``authorized_key=`` carries an OpenSSH public key line in base64; return the line."""
    line = base64.b64decode(value, validate=True).decode("utf-8").strip()
    if "\n" in line or not line.startswith(SSH_KEY_TYPES) or len(line.split()) < 2:
        raise ValueError("not an OpenSSH public key line")
    return line


# Keys whose values are secrets: a problem report names the key, never the value.
SECRET_KEYS = ("vmpassword", "keystore_password", "router_password")
# The secondary storage VM's storage network (storageip/storagenetmask) is always its fourth NIC.
STORAGE_NIC_INDEX = 3
# The public NIC of the storage and console VMs (eth2: control, management, public) and of a router (eth0
# guest, eth1 control, eth2 public).
PUBLIC_NIC_INDEX = 2
# The console proxy's VNC port, as the management server sends it (vncport=): CloudStack's console proxy rules
# open it on the public NIC (consoleproxy.sh writes it over their 8080; the live patch opens it again).
CONSOLE_VNC_PORT = 8080
# nic_macs lists the MACs in NIC order, separated by '|' (CloudStack's common.sh splits it so).
NIC_MACS_SEPARATOR = "|"
NIC_KEY = re.compile(r"^eth(\d+)(ip|ip6)$")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _ipv6(value: str) -> str:
    return str(ipaddress.IPv6Address(value))


def _prefixlen6(value: str) -> int:
    length = int(value)
    if not 1 <= length <= 128:
        raise ValueError(f"{length} is outside 1..128")
    return length


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError("expected true or false")
    return value.lower() == "true"


def _bootproto(value: str) -> str:
    if value not in ("static", "dhcp"):
        raise ValueError("expected static or dhcp")
    return value


def _macs(value: str) -> list[str]:
    macs = [mac.lower() for mac in value.split(NIC_MACS_SEPARATOR)]
    bad = [mac for mac in macs if not MAC.match(mac)]
    if bad:
        raise ValueError(f"not a MAC address: {', '.join(bad)}")
    if len(set(macs)) != len(macs):
        raise ValueError("a MAC address is listed twice")
    return macs


def _ntp_servers(value: str) -> list[str]:
    """``ntpserverlist`` is comma-separated, in order of preference; addresses (v4 or v6) or host names."""
    servers = []
    for item in (item.strip() for item in value.split(",")):
        if not item:
            continue
        try:
            servers.append(str(ipaddress.ip_address(item)))
        except ValueError:
            servers.append(_hostname(item))
    if not servers:
        raise ValueError("no NTP server in the list")
    return servers


def _password(value: str) -> str:
    if not value or not value.isprintable():
        raise ValueError("empty or not printable")
    return value


def nic_macs_value(macs: list[str]) -> str:
    """The ``nic_macs`` value for MACs in NIC order (eth0's first)."""
    return NIC_MACS_SEPARATOR.join(macs)


def read_config(params: dict[str, str], hypervisor: str = "kvm") -> BootConfig:
    """Check the parsed command line. Never raises: a malformed value is skipped and named in ``problems``.

    ``hypervisor`` (one of HYPERVISORS, as the image detected it) decides the control NIC on VMware/Hyper-V.
    """
    config = BootConfig(params=dict(params), hypervisor=hypervisor if hypervisor in HYPERVISORS else "kvm")

    def take(key: str, convert: Callable[[str], Any]) -> Any:  # convert raises ValueError on bad input
        value = params.get(key)
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
            shown = "<hidden>" if key in SECRET_KEYS else repr(value)
            config.problems.append(f"{key}={shown} skipped: {exc}")
            return None

    def role(value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"unknown role, expected one of {', '.join(ROLES)}")
        return value

    config.role = take("type", role)
    config.name = take("name", _hostname)
    config.gateway = take("gateway", _ipv4)
    config.gateway6 = take("ip6gateway", _ipv6)
    config.mtu = take("mtu", _mtu)
    config.authorized_key = take("authorized_key", decode_authorized_key)
    config.mgmt_hosts = take("host", _hosts) or [LINK_LOCAL_HOST]
    config.mgmt_host = config.mgmt_hosts[0]
    config.mgmt_port = take("port", _port) or AGENT_PORT
    config.mgmt_cidr = take("mgmtcidr", _network)
    config.local_gateway = take("localgw", _ipv4)
    config.ssh_on_guest = bool(take("sshonguest", _boolean))
    config.dhcp = take("bootproto", _bootproto) == "dhcp"
    config.disable_rp_filter = bool(take("disable_rp_filter", _boolean))
    config.nic_macs = take("nic_macs", _macs) or []
    config.ntp_servers = take("ntpserverlist", _ntp_servers) or []
    config.vm_password = take("vmpassword", _password)
    config.storage_gateway = take("storagegateway", _ipv4)
    # The zone's internal DNS first (it resolves the storage and management names), then the public ones,
    # then the IPv6 ones (CloudStack's common.sh writes resolv.conf in this order).
    servers = [take(k, _ipv4) for k in ("internaldns1", "internaldns2", "dns1", "dns2", "dns3", "dns4")]
    servers += [take(k, _ipv6) for k in ("ip6dns1", "ip6dns2")]
    for server in servers:
        if server and server not in config.dns:
            config.dns.append(server)
    indexes = sorted({int(m.group(1)) for m in map(NIC_KEY.match, params) if m})
    for index in indexes:
        nic = _read_nic(config, index, take)
        if nic:
            config.nics[index] = nic
    _read_storage_nic(config, take)
    return config


Take = Callable[[str, Callable[[str], Any]], Any]


def _ipv4_part(config: BootConfig, nic: Nic, ip: str | None, mask: str | None) -> None:
    """Fill in the NIC's IPv4 address; 0.0.0.0 (CloudStack's "no address") leaves it unconfigured."""
    if ip in (None, "0.0.0.0"):
        return
    if config.dhcp and nic.index != 0:
        # CloudStack's common.sh: with bootproto=dhcp every configured NIC but eth0 asks DHCP instead
        nic.dhcp = True
        return
    if mask is None:
        if f"eth{nic.index}mask" not in config.params:  # a bad mask was reported already
            config.problems.append(f"eth{nic.index}ip={ip} skipped: no eth{nic.index}mask")
        return
    nic.ip, nic.netmask = ip, mask


def _read_nic(config: BootConfig, index: int, take: Take) -> Nic | None:
    """ethNip/ethNmask, ethNip6/ethNip6prelen and ethNmtu of one NIC; None when it has no address."""
    nic = Nic(index=index, mtu=take(f"eth{index}mtu", _mtu) or config.mtu)
    _ipv4_part(config, nic, take(f"eth{index}ip", _ipv4), take(f"eth{index}mask", _netmask))
    ip6 = take(f"eth{index}ip6", _ipv6)
    prefixlen = take(f"eth{index}ip6prelen", _prefixlen6)
    if ip6 and prefixlen:
        nic.ip6, nic.ip6_prefixlen = ip6, prefixlen
    elif ip6 and f"eth{index}ip6prelen" not in config.params:
        config.problems.append(f"eth{index}ip6={ip6} skipped: no eth{index}ip6prelen")
    if nic.ip is None and not nic.dhcp and nic.ip6 is None:
        return None
    return nic


def _read_storage_nic(config: BootConfig, take: Take) -> None:
    """storageip/storagenetmask address the storage NIC (eth3), whatever eth3ip says."""
    ip = take("storageip", _ipv4)
    mask = take("storagenetmask", _netmask)
    if ip is None and mask is None:
        return
    if ip is None or mask is None:
        if "storageip" in config.params and "storagenetmask" in config.params:
            return  # the malformed one was reported already
        config.problems.append("storage network skipped: storageip and storagenetmask go together")
        return
    index = STORAGE_NIC_INDEX
    nic = config.nics.get(index) or Nic(index=index, mtu=take(f"eth{index}mtu", _mtu) or config.mtu)
    nic.ip = nic.netmask = None
    nic.dhcp = False
    _ipv4_part(config, nic, ip, mask)
    config.nics[index] = nic


def management_route(config: BootConfig) -> tuple[str, str, str] | None:
    """(mgmtcidr, localgw, NIC) when the management network must be routed through localgw, else None.

    The NIC is the one whose network holds localgw. Nothing is routed when mgmtcidr is that NIC's own
    network or part of it (the connected route reaches it already, and a gateway route would shadow it).
    Raises ValueError when localgw is on none of the NICs.
    """
    if not (config.mgmt_cidr and config.local_gateway):
        return None
    cidr = ipaddress.IPv4Network(config.mgmt_cidr)
    gateway = ipaddress.IPv4Address(config.local_gateway)
    for nic in sorted(config.nics.values(), key=lambda n: n.index):
        if nic.interface is None:  # a NIC without an address (bootproto=dhcp) holds no known network
            continue
        network = nic.interface.network
        if gateway in network:
            if cidr.subnet_of(network):
                return None
            return str(cidr), str(gateway), nic.name
    raise ValueError(f"localgw {gateway} is on none of the NICs' networks")


def cmd_line_json(params: dict[str, str]) -> dict[str, Any]:
    """The command line as CloudStack's boot scripts store it: ``{"type": "cmdline", "cmd_line": {...}}``,
    every key in command-line order and every value a string.

    Unlike CloudStack's shell split, a value keeps any '=' after the first (base64 padding survives).
    """
    return {"type": "cmdline", "cmd_line": {key: str(value) for key, value in params.items()}}


def service_lists(role: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(enabled, disabled) services for ``role``; with no role every role service stays disabled."""
    enabled = ROLE_SERVICES[role][0] if role in ROLE_SERVICES else ()
    disabled = tuple(s for s in ROLE_SERVICE_POOL if s not in enabled)
    return enabled, disabled


# systemd-timesyncd (the image's time daemon) reads the command line's NTP servers from this drop-in.
TIMESYNCD_DROPIN = "/etc/systemd/timesyncd.conf.d/60-cloud-ntp.conf"
# Roles whose setup script turns rp_filter off by default (CloudStack's disable_rpfilter).
RP_FILTER_OFF_ROLES = ("secstorage", "consoleproxy", "vpcrouter")


def timesyncd_dropin(servers: list[str]) -> str:
    """The drop-in naming ``ntpserverlist``'s servers, in their order, as the NTP servers to use."""
    return f"# Written by cloud-early-config from ntpserverlist\n[Time]\nNTP={' '.join(servers)}\n"


def rp_filter_sysctls(role: str | None, disable: bool, nics: tuple[str, ...]) -> dict[str, str]:
    """Reverse-path filtering as CloudStack's setup scripts leave it (sysctl key -> value).

    The router (disable_rpfilter_domR) sets the default and its public NICs (eth2 and later) to 0 when the
    command line says ``disable_rp_filter=true``, to 1 otherwise, and always filters on eth0, eth1 and lo.
    The storage, console and VPC roles turn the default off; the others keep the image's settings.
    """
    if role == "router":
        public = "0" if disable else "1"
        values = {"net.ipv4.conf.default.rp_filter": public}
        for nic in nics:
            if nic not in ("eth0", "eth1"):
                values[f"net.ipv4.conf.{nic}.rp_filter"] = public
        for nic in ("eth0", "eth1", "lo"):
            values[f"net.ipv4.conf.{nic}.rp_filter"] = "1"
        return values
    if role in RP_FILTER_OFF_ROLES:
        return {"net.ipv4.conf.default.rp_filter": "0"}
    return {}


def ipv6_sysctls(config: BootConfig) -> dict[str, str]:
    """IPv6 is on only when a NIC has an IPv6 address (the image boots with it disabled).

    CloudStack's setup_interface_ipv6 enables it, accepts router advertisements and forwards; forwarding
    here follows the role (routers only), as for IPv4, since only routers are given IPv6 addresses.
    """
    nics = sorted(n.name for n in config.nics.values() if n.ip6)
    if not nics:
        return {}
    values = {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0"}
    values.update({f"net.ipv6.conf.{nic}.disable_ipv6": "0" for nic in nics})
    values["net.ipv6.conf.all.forwarding"] = "1" if config.role in GUEST_FACING_ROLES else "0"
    values["net.ipv6.conf.all.accept_ra"] = "1"
    return values


def role_sysctls(config: BootConfig) -> dict[str, str]:
    """Every kernel setting the boot sets from the command line: forwarding, rp_filter, IPv6."""
    values = {"net.ipv4.ip_forward": "1" if config.role in GUEST_FACING_ROLES else "0"}
    names = tuple(sorted(n.name for n in config.nics.values()))
    values.update(rp_filter_sysctls(config.role, config.disable_rp_filter, names))
    values.update(ipv6_sysctls(config))
    return values


# --------------------------------------------------------------------------------------------------------
# The base rules: what CloudStack's etc/iptables/iptables-<role> files (systemvm/debian tree, 4.20) hold, as
# facts. The image ships one file per role in that form; the boot copies the role's file to rules.v4 (as
# CloudStack's init.sh and router.sh do), points the 3922 rule at the control NIC (setup_sshd) and loads it.
# The form matters: CloudStack's CsNetfilter (update_config.py) reads iptables-save, rebuilds each rule from
# a fixed list of options (`-m state --state`, `-i`, `-o`, `-p`, one other `-m`, `--dport`, ...) and deletes
# the ones it does not want with that rebuilt text; a rule spelled otherwise (`-m conntrack --ctstate`)
# rebuilds into a `-D` that matches nothing, and sticks for good.
# --------------------------------------------------------------------------------------------------------

RULES_DIR = "/etc/iptables"
# init.sh loads the router's file for a DHCP-only router too; CsNetfilter's del_standard reads the
# dhcpsrvr file (the router's without the metadata port 80), so the image ships both.
BOOT_RULES_FILE_ROLE = {"dhcpsrvr": "router"}
ESTABLISHED = "-m state --state RELATED,ESTABLISHED"
# Multicast groups a redundant router's keepalived (VRRP) and conntrackd talk on.
VRRP_GROUP, CONNTRACKD_GROUP = "224.0.0.18/32", "225.0.0.50/32"


def rules_file(role: str, *, boot: bool = False) -> str:
    """/etc/iptables/iptables-<role>; ``boot``: the file the boot loads for the role (dhcpsrvr: router's)."""
    return f"{RULES_DIR}/iptables-{BOOT_RULES_FILE_ROLE.get(role, role) if boot else role}"


def _table(name: str, chains: list[tuple[str, str]], rules: list[str]) -> list[str]:
    return [f"*{name}", *(f":{chain} {policy} [0:0]" for chain, policy in chains), *rules, "COMMIT"]


_EMPTY_NAT = _table("nat", [("PREROUTING", "ACCEPT"), ("POSTROUTING", "ACCEPT"), ("OUTPUT", "ACCEPT")], [])
_MANGLE_CHAINS = [(c, "ACCEPT") for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")]
_FILTER_CHAINS = [("INPUT", "DROP"), ("FORWARD", "DROP"), ("OUTPUT", "ACCEPT")]


def _router_filter(metadata_port: bool) -> list[str]:
    """iptables-router's filter table (iptables-dhcpsrvr: the same without the metadata server's port 80):
    eth0 guest, eth1 control, eth2 public; egress from the guest network allowed through FW_OUTBOUND."""
    rules = [
        f"-A INPUT -d {VRRP_GROUP} -j ACCEPT",
        f"-A INPUT -d {CONNTRACKD_GROUP} -j ACCEPT",
        *(f"-A INPUT -i {nic} {ESTABLISHED} -j ACCEPT" for nic in ("eth0", "eth1", "eth2")),
        "-A INPUT -p icmp -j ACCEPT",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -i eth0 -p udp -m udp --dport 67 -j ACCEPT",
        "-A INPUT -i eth0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A INPUT -i eth0 -p tcp -m tcp --dport 53 -j ACCEPT",
        f"-A INPUT -i eth1 -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport {SSH_PORT} -j ACCEPT",
    ]
    if metadata_port:
        rules.append("-A INPUT -i eth0 -p tcp -m tcp -m state --state NEW --dport 80 -j ACCEPT")
    rules += [
        f"-A FORWARD -i eth0 -o eth1 {ESTABLISHED} -j ACCEPT",
        f"-A FORWARD -i eth2 -o eth0 {ESTABLISHED} -j ACCEPT",
        "-A FORWARD -i eth0 -o eth0 -m state --state NEW -j ACCEPT",
        f"-A FORWARD -i eth0 -o eth0 {ESTABLISHED} -j ACCEPT",
        "-A FORWARD -i eth0 -o eth2 -j FW_OUTBOUND",
        "-A FW_EGRESS_RULES -j ACCEPT",
        f"-I FW_OUTBOUND {ESTABLISHED} -j ACCEPT",
        "-A FW_OUTBOUND -j FW_EGRESS_RULES",
    ]
    return rules


def base_rules_v4(role: str) -> str:
    """The text of CloudStack's /etc/iptables/iptables-<role> for ``role`` (iptables-restore input)."""
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}'")
    lines = list(_EMPTY_NAT)
    if role in ("router", "dhcpsrvr"):
        chains = [*_FILTER_CHAINS, ("FW_EGRESS_RULES", "-"), ("FW_OUTBOUND", "-")]
        lines += _table("filter", chains, _router_filter(metadata_port=role == "router"))
        lines += _table("mangle", _MANGLE_CHAINS, [
            f"-A PREROUTING {ESTABLISHED} -j CONNMARK --restore-mark",
            "-A POSTROUTING -p udp -m udp --dport bootpc -j CHECKSUM --checksum-fill",
        ])  # fmt: skip
    elif role == "vpcrouter":  # eth0 control; the guest and public NICs come later, from the JSON data bags
        lines += _table("filter", _FILTER_CHAINS, [
            f"-A INPUT -d {VRRP_GROUP} -j ACCEPT",
            f"-A INPUT -d {CONNTRACKD_GROUP} -j ACCEPT",
            "-A INPUT -p icmp -j ACCEPT",
            "-A INPUT -i lo -j ACCEPT",
            f"-A INPUT -i eth0 -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport {SSH_PORT} -j ACCEPT",
            f"-A INPUT {ESTABLISHED} -j ACCEPT",
            f"-A FORWARD {ESTABLISHED} -j ACCEPT",
        ])  # fmt: skip
        lines += _table("mangle", _MANGLE_CHAINS, [
            "-A OUTPUT -p udp -m udp --dport bootpc -j CHECKSUM --checksum-fill"
        ])  # fmt: skip
    elif role == "secstorage":  # eth0 control, eth1 management, eth2 public, eth3 storage
        lines += _table("filter", [*_FILTER_CHAINS, ("HTTP", "-")], [
            *(f"-A INPUT -i {nic} {ESTABLISHED} -j ACCEPT" for nic in ("eth0", "eth1", "eth2", "eth3")),
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -p icmp -m icmp --icmp-type 13 -j DROP",  # ICMP timestamp requests
            "-A INPUT -p icmp -j ACCEPT",
            f"-A INPUT -i eth0 -p tcp -m state --state NEW -m tcp --dport {SSH_PORT} -j ACCEPT",
        ])  # fmt: skip
    elif role == "consoleproxy":  # eth0 control, eth1 management, eth2 public
        public = [f"-A INPUT -i eth2 -p tcp -m state --state NEW -m tcp --dport {port} -j ACCEPT"
                  for port in (443, 80, CONSOLE_VNC_PORT)]  # fmt: skip
        lines += _table("filter", _FILTER_CHAINS, [
            "-A INPUT -i lo -j ACCEPT",
            *(f"-A INPUT -i {nic} {ESTABLISHED} -j ACCEPT" for nic in ("eth0", "eth1", "eth2")),
            "-A INPUT -p icmp -m icmp --icmp-type 13 -j DROP",
            "-A INPUT -p icmp -j ACCEPT",
            f"-A INPUT -i eth1 -p tcp -m state --state NEW -m tcp --dport {SSH_PORT} -j ACCEPT",
            *(f"-A INPUT -i {nic} -p tcp -m state --state NEW -m tcp --dport {CONSOLE_PROXY_PORT} -j ACCEPT"
              for nic in ("eth0", "eth1")),
            *public,
        ])  # fmt: skip
    else:  # ilbvm, elbvm: eth0 guest, eth1 control; the load balancer rules open their ports later
        lines += _table("filter", _FILTER_CHAINS, [
            "-A INPUT -i lo -j ACCEPT",
            *(f"-A INPUT -i {nic} {ESTABLISHED} -j ACCEPT" for nic in ("eth0", "eth1")),
            "-A INPUT -p icmp -j ACCEPT",
            f"-A INPUT -i eth1 -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport {SSH_PORT} -j ACCEPT",
        ])  # fmt: skip
    return "\n".join([*lines, ""])


def boot_rules_v4(
    text: str, role: str, control: str, guest_source: str | None = None, vnc_port: str | None = None
) -> str:
    """A role's rules file (``text``: the image's /etc/iptables/iptables-<role>, or CloudStack's own once a
    patch brought it) as the boot loads it: every rule on 3922 moved to the control NIC (CloudStack's
    setup_sshd swaps the first ``ethN`` of each line naming 3922), for a router the two guest DNS rules
    limited to the guest network (``guest_source``: ``<dhcprange>/<cidrsize>``, as router.sh adds it), and
    the console proxy's VNC port (``vncport``) where the file opens 8080 (consoleproxy.sh means to; its sed
    writes the variable's name instead, issues 8303 and 9039)."""
    out = []
    for line in text.splitlines():
        if vnc_port and role == "consoleproxy" and f"--dport {CONSOLE_VNC_PORT} " in line:
            line = line.replace(f"--dport {CONSOLE_VNC_PORT} ", f"--dport {vnc_port} ")
        if str(SSH_PORT) in line:
            line = re.sub(r"eth\d+", control, line, count=1)
        if guest_source and role == "router" and "-i eth0 " in line and "--dport 53 " in line:
            line = line.replace(" -j ACCEPT", f" -s {guest_source} -j ACCEPT")
        out.append(line)
    return "\n".join(out) + "\n"


def default_rules_v4(control: str = "eth0") -> str:
    """The rules of an image no command line configured yet: SSH on ``control`` only, in the base rules'
    form."""
    lines = _table("filter", _FILTER_CHAINS, [
        "-A INPUT -i lo -j ACCEPT",
        f"-A INPUT {ESTABLISHED} -j ACCEPT",
        "-A INPUT -p icmp -j ACCEPT",
        f"-A INPUT -i {control} -p tcp -m tcp -m state --state NEW,ESTABLISHED --dport {SSH_PORT} -j ACCEPT",
    ])  # fmt: skip
    return "\n".join([*lines, ""])


def firewall_rules_v6() -> str:
    """IPv6 stays closed: loopback, established traffic and the ICMPv6 that neighbour discovery needs."""
    return "\n".join(
        [
            "# Written by systemvm-firewall; IPv6 is not used by the system VM roles.",
            "*filter",
            ":INPUT DROP [0:0]",
            ":FORWARD DROP [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            "-A INPUT -i lo -j ACCEPT",
            f"-A INPUT {ESTABLISHED} -j ACCEPT",
            "-A INPUT -p ipv6-icmp -j ACCEPT",
            "COMMIT",
            "",
        ]
    )
