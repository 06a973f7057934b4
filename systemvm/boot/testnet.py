"""Test-mode networking: QEMU user networking laid out like CloudStack's NICs, reachable from 127.0.0.1.

The control NIC sits on the link-local network 169.254.0.0/16 as on a real KVM host (``cloud0``), but it is a
QEMU user-mode network: port 3922 of the guest is forwarded to a free port on 127.0.0.1, and the host side of
the network answers at 169.254.0.1, where QEMU connects the guest to the host's 127.0.0.1 (the management
listener). Routers get a guest network on eth0 first. Plain QEMU and the libvirt driver share these arguments.

With a :class:`LabNics` (the host-side network lab, :mod:`systemvm.lab.netlab`), a router's guest NIC (eth0)
and a public NIC (eth2) are the lab's taps instead, with the lab's addresses and the public gateway; the
control NIC stays user-mode. The storage and console VMs get CloudStack's three NICs then: eth0 control
(user-mode, as without a lab), eth1 management (user-mode) and eth2 public on the lab's tap. Without a lab,
the plan is exactly the user-mode one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import secrets
import socket

from systemvm import contract


@dataclasses.dataclass(frozen=True)
class NicPlan:
    index: int
    network: str  # CIDR of the user-mode network
    host_ip: str  # QEMU's address on it (reaches the host's 127.0.0.1)
    guest_ip: str
    netmask: str
    mac: str
    forward_ssh: bool
    tap: str | None = None  # a lab tap QEMU opens by name (no user-mode network then)


# The roles a lab takes, and the NIC each lab tap is for. A router: guest, control, public (eth0 and eth2 on
# taps). The storage and console VMs: control, management, public (eth2 on a tap; eth3, the storage VM's
# optional storage NIC, is left out).
LAB_ROLES = ("router", *contract.AGENT_ROLES)


@dataclasses.dataclass(frozen=True)
class LabNics:
    """A VM's data NICs on lab taps: a router's eth0 on the guest network and eth2 on the public one; the
    storage or console VM's eth2 on the public one (``guest_tap`` None). The taps exist
    (``NetLab.add_tap``) before the VM starts."""

    guest_tap: str | None
    public_tap: str
    guest_ip: str = "10.1.1.1"
    guest_netmask: str = "255.255.255.0"
    public_ip: str = "198.51.100.10"
    public_netmask: str = "255.255.255.0"
    gateway: str = "198.51.100.1"  # the default route, on the public NIC


@dataclasses.dataclass(frozen=True)
class TestNetwork:
    role: str
    ssh_host_port: int
    nics: tuple[NicPlan, ...]
    gateway: str | None = None  # the command line's gateway= (only with a lab)

    @property
    def taps(self) -> list[str]:
        """The lab taps of the plan, in NIC order (plug them once the VM started)."""
        return [n.tap for n in self.nics if n.tap]

    @property
    def control(self) -> NicPlan:
        return next(n for n in self.nics if n.forward_ssh)

    @property
    def mgmt_host(self) -> str:
        """Where the guest reaches the management listener (the host's 127.0.0.1)."""
        return self.control.host_ip

    def boot_nics(self) -> list[tuple[str, str]]:
        return [(n.guest_ip, n.netmask) for n in self.nics]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mac(seed: str, index: int) -> str:
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def plan_test_network(
    role: str, name: str = "s-1-VM", ssh_host_port: int | None = None, lab: LabNics | None = None
) -> TestNetwork:
    """NICs for ``role``: the control NIC forwards 3922; routers get a guest network on eth0 first.

    ``lab``: a router's eth0 and a third NIC, eth2 (public), are the lab's taps with its addresses; a storage
    or console VM gets a management NIC (eth1, user-mode) and eth2 on the lab's public tap."""
    if lab is not None and role not in LAB_ROLES:
        raise ValueError(f"a lab takes a {', '.join(LAB_ROLES)}, not a {role}")
    if lab is not None and (lab.guest_tap is None) != (role != "router"):
        raise ValueError(f"a {role} in a lab has {'a' if role == 'router' else 'no'} guest tap")
    control = contract.control_nic(role)
    port = ssh_host_port or free_port()
    link_local = contract.LINK_LOCAL_NET
    # A guest address derived from the name, as CloudStack hands out link-local addresses per VM.
    offset = 256 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big") % 60000
    nics = []
    for index in range(contract.nic_count(role)):
        if f"eth{index}" == control:
            nics.append(
                NicPlan(
                    index=index,
                    network=str(link_local),
                    host_ip=contract.LINK_LOCAL_HOST,
                    guest_ip=str(link_local.network_address + offset),
                    netmask=str(link_local.netmask),
                    mac=_mac(name, index),
                    forward_ssh=True,
                )
            )
        else:
            nics.append(_user_nic(GUEST_NET, index, name))
    if lab is None:
        return TestNetwork(role=role, ssh_host_port=port, nics=tuple(nics))
    if lab.guest_tap is None:  # eth0 control stays; eth1 management (user-mode), then the public tap
        nics.append(_user_nic(MGMT_NET, len(nics), name))
    else:
        nics[0] = dataclasses.replace(
            nics[0],
            network="",
            host_ip="",
            guest_ip=lab.guest_ip,
            netmask=lab.guest_netmask,
            tap=lab.guest_tap,
        )
    public = NicPlan(
        index=len(nics),
        network="",
        host_ip="",
        guest_ip=lab.public_ip,
        netmask=lab.public_netmask,
        mac=_mac(name, len(nics)),
        forward_ssh=False,
        tap=lab.public_tap,
    )
    nics.append(public)
    return TestNetwork(role=role, ssh_host_port=port, nics=tuple(nics), gateway=lab.gateway)


# A router's guest NIC (eth0) without a lab: a user-mode network (the lab's guest network has the same range).
GUEST_NET = ipaddress.IPv4Network("10.1.1.0/24")
# The storage and console VMs' management NIC (eth1) in a lab: a user-mode network of its own (nothing of the
# checks runs over it; the agent reaches the management listener over the control NIC, as without a lab).
MGMT_NET = ipaddress.IPv4Network("10.1.2.0/24")


def _user_nic(network: ipaddress.IPv4Network, index: int, name: str) -> NicPlan:
    """A data NIC on a user-mode network: the guest at .1, QEMU at .2 (as every user-mode data NIC)."""
    return NicPlan(
        index=index,
        network=str(network),
        host_ip=str(network.network_address + 2),
        guest_ip=str(network.network_address + 1),
        netmask=str(network.netmask),
        mac=_mac(name, index),
        forward_ssh=False,
    )


def tap_netdev(nic: NicPlan) -> str:
    """``-netdev`` for a lab tap: QEMU opens the existing tap by name and runs no scripts on it."""
    return f"tap,id=svmnet{nic.index},ifname={nic.tap},script=no,downscript=no"


def qemu_netdev_args(
    plan: TestNetwork,
    device: str = "virtio-net-pci",
    user_only: bool = False,
    first_slot: int | None = None,
    bus: str = "pci.0",
) -> list[str]:
    """``-netdev user,...`` (a lab tap: ``-netdev tap,...``) and ``-device ...`` arguments, one pair per
    NIC, in NIC order. ``user_only``: leave the taps out (libvirt has them as ``<interface>`` elements);
    ``first_slot``: NIC ``n``'s device sits at PCI slot ``first_slot + n`` of ``bus`` (the guest's ethN
    order; the root bus is ``pci.0`` on x86's ``pc``, ``pcie.0`` on Arm's ``virt``)."""
    args: list[str] = []
    for nic in plan.nics:
        if nic.tap and user_only:
            continue
        if nic.tap:
            netdev = tap_netdev(nic)
        else:
            netdev = f"user,id=svmnet{nic.index},net={nic.network},host={nic.host_ip},ipv6=off"
        if nic.forward_ssh:
            netdev += f",hostfwd=tcp:127.0.0.1:{plan.ssh_host_port}-{nic.guest_ip}:{contract.SSH_PORT}"
        pci = f",bus={bus},addr={first_slot + nic.index:#04x}" if first_slot is not None else ""
        args += ["-netdev", netdev, "-device", f"{device},netdev=svmnet{nic.index},mac={nic.mac}{pci}"]
    return args


# A management network the harness asks the storage and console VMs to route through localgw, as
# CloudStack does for a management server in another subnet (nothing listens there).
TEST_MGMT_CIDR = "10.250.0.0/16"
# The "public" resolver the command line lists after the zone's internal one (dns1 after internaldns1).
# Never a real public address: a guest's queries must stay on this machine (the guest's own loopback,
# where nothing answers, so a lookup the internal DNS cannot answer fails at once).
TEST_PUBLIC_DNS = "127.0.0.1"


# NTP servers for ntpserverlist: the guest's own loopback (nothing answers; no packet leaves the guest).
TEST_NTP_SERVERS = ("127.0.0.1", "localhost")
# A ULA prefix for the routers' guest NIC: the address is configured, nothing routes it (QEMU's user
# network has IPv6 off), and the gateway gives the default IPv6 route. ::1 as the IPv6 resolver fails at
# once, as TEST_PUBLIC_DNS does.
TEST_GUEST_NET6 = ipaddress.IPv6Network("fd00:a01:101::/64")
TEST_DNS6 = "::1"


# The guest network's DNS domain a router is given (CloudStack sends domain=, the network's, with the guest
# NIC's keys); the lab's DHCP and DNS checks read it from the command line.
TEST_GUEST_DOMAIN = "cs2cloud.internal"


def guest_network_keys(plan: TestNetwork) -> dict[str, str]:
    """What CloudStack sends with a router's guest NIC: the domain, the guest network's prefix length and
    the DHCP range's first address (``domain``, ``cidrsize``, ``dhcprange``; setup_dnsmasq and router.sh
    read them)."""
    if plan.role != "router":
        return {}
    guest = plan.nics[0]
    prefix = ipaddress.IPv4Network(f"0.0.0.0/{guest.netmask}").prefixlen
    return {"domain": TEST_GUEST_DOMAIN, "cidrsize": str(prefix), "dhcprange": guest.guest_ip}


def cheap_keys(role: str) -> dict[str, str]:
    """Keys CloudStack sends that change nothing a test VM needs: NTP servers, a root password of this run
    (random: it is a test VM's, and SSH refuses passwords anyway), and rp_filter off on routers."""
    keys = {"ntpserverlist": ",".join(TEST_NTP_SERVERS), "vmpassword": secrets.token_urlsafe(12)}
    if role == "router":
        keys["disable_rp_filter"] = "true"
    return keys


def ipv6_keys(plan: TestNetwork) -> dict[str, str]:
    """An IPv6 address, the default IPv6 route and a resolver on a router's first data NIC."""
    data = [n for n in plan.nics if not n.forward_ssh]
    if plan.role not in contract.GUEST_FACING_ROLES or not data:
        return {}
    nic = data[0].index
    return {
        f"eth{nic}ip6": str(TEST_GUEST_NET6.network_address + 1),
        f"eth{nic}ip6prelen": str(TEST_GUEST_NET6.prefixlen),
        "ip6gateway": str(TEST_GUEST_NET6.network_address + 2),
        "ip6dns1": TEST_DNS6,
    }


def public_nic_keys(plan: TestNetwork) -> dict[str, str]:
    """What CloudStack adds for a storage or console VM's public and management NICs (only a lab plan has
    them): the storage VM names its devices (``public.network.device``, ``private.network.device``), the
    console proxy gets its VNC port. The public NIC's address and ``gateway`` come with every plan's NICs."""
    if plan.role not in contract.AGENT_ROLES or not plan.taps:
        return {}
    if plan.role == "consoleproxy":
        return {"vncport": str(contract.CONSOLE_VNC_PORT)}
    management = next(n for n in plan.nics if not n.forward_ssh and not n.tap)
    return {
        "public.network.device": f"eth{contract.PUBLIC_NIC_INDEX}",
        "private.network.device": f"eth{management.index}",
    }


def internal_dns(plan: TestNetwork) -> str:
    """QEMU's user-network DNS proxy on the control network (the network address + 3)."""
    return str(ipaddress.ip_network(plan.control.network).network_address + 3)


def boot_args(plan: TestNetwork, name: str, authorized_key: str, mgmt_port: int) -> contract.BootArgs:
    """The command line the harness sends for this network plan: CloudStack's keys for the role, with the
    zone's internal DNS first and, for the storage and console VMs, mgmtcidr routed via localgw; the NICs'
    MACs in order (nic_macs), IPv6 on a router's data NIC, :func:`cheap_keys` and, in a lab, the public
    NIC's keys (:func:`public_nic_keys`)."""
    extra = {"internaldns1": internal_dns(plan), **cheap_keys(plan.role), **ipv6_keys(plan)}
    extra.update(guest_network_keys(plan))
    extra.update(public_nic_keys(plan))
    extra["nic_macs"] = contract.nic_macs_value([n.mac for n in plan.nics])
    if plan.role in contract.AGENT_ROLES:
        extra.update(mgmtcidr=TEST_MGMT_CIDR, localgw=plan.control.host_ip)
    return contract.BootArgs(
        role=plan.role,
        name=name,
        nics=plan.boot_nics(),
        authorized_key=authorized_key,
        mgmt_host=plan.mgmt_host,
        mgmt_port=mgmt_port,
        gateway=plan.gateway,
        dns=(TEST_PUBLIC_DNS,),
        extra=extra,
    )
