"""The CloudStack boot contract: command line keys, roles, NIC layout and ports.

Both the image (elements/systemvm-boot reads a copy of the same rules) and the harness follow this
module, so a key or a NIC position changes in one place.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress

SSH_PORT = 3922
AGENT_PORT = 8250
ROLES = ("secstorage", "consoleproxy", "router", "vpcrouter", "dhcpsrvr")
HYPERVISORS = ("kvm", "xenserver", "vmware", "hyperv")
# The link-local network CloudStack's KVM and Xen hosts give system VMs on their control NIC.
LINK_LOCAL_NET = ipaddress.ip_network("169.254.0.0/16")
LINK_LOCAL_HOST = "169.254.0.1"

# Role -> TCP ports the role opens to the world, besides SSH on the control NIC.
ROLE_PORTS: dict[str, tuple[int, ...]] = {
    "secstorage": (80, 443),
    "consoleproxy": (80, 443, 8001),
    "router": (53, 67, 80, 443, 8080),
    "vpcrouter": (53, 67, 80, 443, 8080),
    "dhcpsrvr": (53, 67, 80),
}
# Role -> services the role runs (enabled) and those it must not (disabled).
ROLE_SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "secstorage": (("apache2", "nfs-common", "cloud"), ("haproxy", "dnsmasq", "keepalived", "strongswan-starter")),
    "consoleproxy": (("cloud",), ("apache2", "haproxy", "dnsmasq", "keepalived", "strongswan-starter")),
    "router": (("haproxy", "dnsmasq", "apache2"), ("cloud", "nfs-server")),
    "vpcrouter": (("haproxy", "dnsmasq", "apache2"), ("cloud", "nfs-server")),
    "dhcpsrvr": (("dnsmasq", "apache2"), ("cloud", "haproxy", "nfs-server")),
}
AGENT_ROLES = ("secstorage", "consoleproxy")


def control_nic(role: str, hypervisor: str = "kvm") -> str:
    """The NIC that carries SSH on 3922 for ``role``, as CloudStack lays NICs out."""
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}': use one of {', '.join(ROLES)}")
    if role in ("router", "dhcpsrvr"):
        return "eth1"  # eth0 is the guest network
    if hypervisor in ("vmware", "hyperv") and role in ("secstorage", "consoleproxy"):
        return "eth1"  # no link-local network there: the management NIC
    return "eth0"


def nic_count(role: str) -> int:
    """How many NICs the harness gives a VM of ``role`` (control NIC + the ones it needs before it)."""
    return 2 if control_nic(role) == "eth1" else 1


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
