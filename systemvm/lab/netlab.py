"""The host side of the system VMs' data networks: namespaces, bridges, taps and the services checks talk to.

A router's guest and public NICs and the storage and console VMs' public NICs are tap devices; behind them
the lab puts real hosts (network namespaces) with real services, so a check can send traffic through the
router (SNAT, port forwards, HAProxy, IPsec) or to a VM's public address and watch what arrives. Nothing
of it is reachable from the host itself. This module builds and removes the topology and runs processes in
it; :mod:`systemvm.lab.services` starts the services (HTTP, NFS, strongSwan, iperf3) on it.

How a tap reaches a namespace (tried on this host: a diskless QEMU in tests/e2e/test_netlab.py, and a
diskless libvirt domain with an ethernet interface by hand, with the same result):

- A bridge and its ports must live in one network namespace, and QEMU opens its tap by name in its own
  namespace: the root one, for plain QEMU and for libvirt's QEMU alike (libvirt's control NIC and QEMU's
  user-mode forward to the host's 127.0.0.1 keep the VM there, and one VM has NICs on two lab networks).
- So each lab network is a *switch namespace* holding a bridge, and a VM's tap is created in the root
  namespace (down, IPv6 off, never an address), opened by QEMU (``-netdev tap,ifname=TAP,script=no,
  downscript=no``) or by libvirt (``<interface type='ethernet'><target dev='TAP' managed='no'/>``), and
  then *moved* into the switch namespace and enslaved to its bridge (:meth:`NetLab.plug`). The open file
  descriptor follows the device: the tap keeps its carrier and frames keep flowing.
- :meth:`NetLab.plug` moves a tap only once a process holds it open (the kernel names the device in the
  descriptor's fdinfo): moved too early, the name is free again in the root namespace and QEMU would
  silently create a fresh, unconnected tap. Call it right after starting the VM, with a timeout.
- Rejected: a bridge in the root namespace (a host device the host's bridge netfilter and firewall see, and
  one step from an address in the host's routing); QEMU inside a lab namespace (see above).

Each host (the client and two web backends on the guest network, the server on the public network) is a
namespace of its own with one veth into its switch: separate stacks, so source addresses and routes are a
real host's, and the router's address translations show in what the servers log. Every device but the taps
is created inside its namespace, IPv6 is off everywhere (no stray neighbour discovery in the observations),
and everything is named with a short run prefix: deleting the namespaces removes bridges, veths and moved
taps; the processes are found with ``ip netns pids`` (also those of a crashed run: :func:`cleanup_leftovers`).

The CI machine's kernel has no NFS (server or client) and no ESP, so the NFS export is nfs-ganesha (user
space, with its own rpcbind) and the strongSwan peer does ESP in user space (kernel-libipsec), in UDP
(``encap = yes``: port 4500, which the router's kernel IPsec speaks too). Both work on any host kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from systemvm.errors import UserError
from systemvm.hosttools import require_tools

NETWORKS = ("guest", "public")
BRIDGE = "br0"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")


class LabError(UserError):
    """The lab could not be built, a service did not come up, or something of the lab was left behind."""


@dataclasses.dataclass(frozen=True)
class LabPlan:
    """The lab's addresses. The guest network is testnet's (the router's guest NIC is 10.1.1.1); the public
    one is a documentation range (RFC 5737), so it can never be mistaken for a reachable network."""

    guest_cidr: str = "10.1.1.0/24"
    router_guest_ip: str = "10.1.1.1"
    client_ip: str = "10.1.1.10"
    backend_ips: tuple[str, ...] = ("10.1.1.11", "10.1.1.12")
    public_cidr: str = "198.51.100.0/24"
    server_ip: str = "198.51.100.1"  # the public gateway, and every public service
    router_public_ip: str = "198.51.100.10"
    storage_public_ip: str = "198.51.100.11"
    console_public_ip: str = "198.51.100.12"
    site_cidr: str = "10.2.2.0/24"  # the IPsec peer's own network, behind the tunnel
    site_ip: str = "10.2.2.1"  # on the server's loopback
    # also on it: what the router's VPN checks reach (the egress rule blocks site_ip)
    tunnel_ip: str = "10.2.2.2"

    def public_ip(self, role: str) -> str:
        """The public NIC's address of a VM of ``role`` in the lab (each role its own)."""
        addresses = {
            "router": self.router_public_ip,
            "secstorage": self.storage_public_ip,
            "consoleproxy": self.console_public_ip,
        }
        if role not in addresses:
            raise LabError(f"the lab has no public address for a {role}: use one of {', '.join(addresses)}")
        return addresses[role]

    def prefixlen(self, network: str) -> int:
        cidr = self.guest_cidr if network == "guest" else self.public_cidr
        return ipaddress.ip_network(cidr).prefixlen


@dataclasses.dataclass(frozen=True)
class Host:
    name: str  # also its veth's name in the switch and the suffix of its namespace
    network: str
    ip: str
    gateway: str | None


def backend_names(plan: LabPlan) -> list[str]:
    """The web backends' host names, in the order of ``plan.backend_ips``."""
    return [f"web{i}" for i in range(1, len(plan.backend_ips) + 1)]


def lab_hosts(plan: LabPlan) -> tuple[Host, ...]:
    """The client, the web backends (their default route is the router) and the public server."""
    guest = [Host("client", "guest", plan.client_ip, plan.router_guest_ip)]
    guest += [
        Host(name, "guest", ip, plan.router_guest_ip)
        for name, ip in zip(backend_names(plan), plan.backend_ips, strict=True)
    ]
    return (*guest, Host("server", "public", plan.server_ip, None))


@dataclasses.dataclass
class Service:
    """A process in a lab namespace, stopped with its process group."""

    name: str
    netns: str
    proc: subprocess.Popen[bytes]
    log: Path
    address: str = ""
    port: int = 0
    access_log: Path | None = None  # HTTP servers: one line per request, the client address first
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # children that left the group (rpcbind under ganesha's shell) are the lab's kill sweep's job

    def clients_seen(self) -> list[str]:
        """The client address of every request an HTTP server logged, in order."""
        if self.access_log is None or not self.access_log.exists():
            return []
        return [line.split()[0] for line in self.access_log.read_text().splitlines() if line.strip()]


def _ip(*args: str, netns: str | None = None, batch: str | None = None) -> str:
    """Run iproute2's ``ip`` (in ``netns``; ``batch``: commands one a line on stdin); raise with its error."""
    command = ["ip", *(["-n", netns] if netns else []), *args, *(["-batch", "-"] if batch else [])]
    done = subprocess.run(command, input=batch, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        where = f" in {netns}" if netns else ""
        raise LabError(f"'{' '.join(command)}'{where} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def list_netns() -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [entry["name"] for entry in json.loads(out or "[]")]


def netns_pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
    return [int(pid) for pid in done.stdout.split()]


def root_links() -> list[dict[str, object]]:
    """This (the root) namespace's links with their kind (``linkinfo.info_kind``: tun, veth, ...)."""
    out = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout or "[]"))


def _link_kind(link: Mapping[str, object]) -> str:
    info = link.get("linkinfo")
    return str(info.get("info_kind", "")) if isinstance(info, dict) else ""


def _is_lab_link(name: str, prefix: str) -> bool:
    """Names the lab gives root-namespace devices: ``<prefix>[...]t<n>`` (taps)."""
    return re.fullmatch(rf"{re.escape(prefix)}[a-z0-9]*t\d+", name) is not None


def _disable_ipv6(device: str) -> None:
    """No link-local address on a root-namespace device, ever (written before the device is up)."""
    flag = Path(f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6")
    if flag.exists():
        flag.write_text("1\n")


def _kill_netns_processes(netns: str, grace: float = 3.0) -> list[int]:
    """SIGTERM every process in ``netns``, SIGKILL what is still there after ``grace`` seconds."""
    pids = netns_pids(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while netns_pids(netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in netns_pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while netns_pids(netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def tap_holders(tap: str) -> list[int]:
    """The processes holding ``tap`` open: the kernel names a tun descriptor's device in its fdinfo
    (``iff: NAME``), wherever the device is now, so this is safe to ask before moving it."""
    needle = f"iff:\t{tap}\n"
    holders: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == "/dev/net/tun" and needle in (proc / "fdinfo" / fd.name).read_text():
                    holders.append(int(proc.name))
                    break
        except OSError:  # gone, or a descriptor closed while we looked
            continue
    return holders


def remove_netns(netns: str) -> None:
    """Kill every process in ``netns``, then delete it (with the devices in it)."""
    _kill_netns_processes(netns)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def _listening(pid: int, port: int, proto: str) -> bool:
    """Whether a socket of ``proto`` (tcp|udp) listens on ``port`` in the network namespace of ``pid``.

    /proc/PID/net shows the namespace of PID, so no process has to be started in it to look.
    """
    state = "0A" if proto == "tcp" else "07"  # LISTEN, or an unconnected UDP socket
    for table in (proto, f"{proto}6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


class NetLab:
    """One run's lab: :func:`net_lab` builds it and always tears it down."""

    def __init__(self, prefix: str, plan: LabPlan, work_dir: Path) -> None:
        self.prefix = prefix
        self.plan = plan
        self.work_dir = work_dir
        self.hosts = {host.name: host for host in lab_hosts(plan)}
        self.taps: dict[str, str] = {}  # tap name -> network
        self.services: list[Service] = []
        self._created: list[str] = []  # namespaces, in creation order

    # ----------------------------------------------------------------------------------------- names

    def netns(self, name: str) -> str:
        """The namespace of a host (``client``, ``web1``, ``server``, ...) or a switch (``guest-sw``)."""
        return f"{self.prefix}-{name}"

    def switch(self, network: str) -> str:
        if network not in NETWORKS:
            raise LabError(f"unknown lab network '{network}': use one of {', '.join(NETWORKS)}")
        return self.netns(f"{network}-sw")

    def namespaces(self) -> list[str]:
        return [self.switch(n) for n in NETWORKS] + [self.netns(h) for h in self.hosts]

    # --------------------------------------------------------------------------------------- building

    def create(self) -> None:
        """Namespaces, bridges, one veth per host, addresses and routes (nothing in the root namespace)."""
        names = self.namespaces()
        for name in names:  # one by one, so a failure leaves a precise list to remove
            _ip("netns", "add", name)
            self._created.append(name)
        # IPv6 off before any device exists in them; `ip -batch` runs each `netns exec` in turn
        sysctl = "sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"
        _ip(batch="".join(f"netns exec {name} {sysctl}\n" for name in names))
        for network in NETWORKS:
            lines = [f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up"]
            for host in self.hosts.values():
                if host.network == network:
                    lines += [
                        f"link add {host.name} type veth peer name eth0 netns {self.netns(host.name)}",
                        f"link set {host.name} master {BRIDGE} up",
                    ]
            _ip(netns=self.switch(network), batch="\n".join(lines) + "\n")
        for host in self.hosts.values():
            lines = [
                "link set lo up",
                f"addr add {host.ip}/{self.plan.prefixlen(host.network)} dev eth0",
                "link set eth0 up",
            ]
            if host.gateway:
                lines.append(f"route add default via {host.gateway} dev eth0 onlink")
            if host.name == "server":
                lines += [f"addr add {ip}/32 dev lo" for ip in (self.plan.site_ip, self.plan.tunnel_ip)]
            _ip(netns=self.netns(host.name), batch="\n".join(lines) + "\n")

    def add_tap(self, network: str) -> str:
        """A new tap in the root namespace for a VM's NIC on ``network``: give its name to QEMU or libvirt,
        start the VM, then :meth:`plug` it. Down, IPv6 off, no address: the host never talks on it."""
        self.switch(network)  # checks the name
        name = f"{self.prefix}t{len(self.taps)}"
        _ip("tuntap", "add", "dev", name, "mode", "tap")
        self.taps[name] = network
        _disable_ipv6(name)
        return name

    def plug(self, device: str, network: str | None = None, timeout: float = 0.5) -> None:
        """Move ``device`` (a tap QEMU holds open, or a veth end) from the root namespace onto the bridge of
        ``network`` (default: the tap's own network).

        A tap of the lab moves only once a process holds it open (waiting up to ``timeout``: call this
        right after starting the VM): moved earlier, its name would be free in the root namespace and
        QEMU would create a new, unconnected tap. Any device must then have carrier on the bridge, or it
        goes back to the root namespace and this raises."""
        network = network or self.taps.get(device)
        if network is None:
            raise LabError(f"'{device}' is not a tap of this lab: give the network to plug it into")
        switch = self.switch(network)
        deadline = time.monotonic() + timeout
        while device in self.taps and not tap_holders(device):
            if time.monotonic() > deadline:
                raise LabError(
                    f"no process holds the tap '{device}' open after {timeout:g}s "
                    "(start the VM first, then plug its taps); it stays in the root namespace"
                )
            time.sleep(0.05)
        _ip("link", "set", device, "netns", switch)
        _ip(netns=switch, batch=f"link set {device} master {BRIDGE}\nlink set {device} up\n")
        deadline = time.monotonic() + 2.0  # a held tap has carrier at once, a veth once its peer is up
        while not self.has_carrier(device, network):
            if time.monotonic() > deadline:
                self.unplug(device, network)
                raise LabError(
                    f"'{device}' has no carrier on the {network} network: back in the root namespace"
                )
            time.sleep(0.05)

    def unplug(self, device: str, network: str | None = None) -> None:
        """Move ``device`` back to the root namespace, down (before a new QEMU opens the tap again)."""
        switch = self.switch(network or self.taps[device])
        _ip(netns=switch, batch=f"link set {device} down\nlink set {device} nomaster\n")
        _ip("link", "set", device, "netns", str(os.getpid()), netns=switch)

    def has_carrier(self, device: str, network: str) -> bool:
        out = _ip("-j", "link", "show", "dev", device, netns=self.switch(network))
        flags = json.loads(out)[0].get("flags", [])
        return "LOWER_UP" in flags

    # ------------------------------------------------------------------------------------------- use

    def exec(
        self, host: str, *command: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in a host's namespace (``ip netns exec``) and return what it printed."""
        argv = ["ip", "netns", "exec", self.netns(host), *command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise LabError(f"{' '.join(command)} in {host} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def spawn(
        self,
        name: str,
        host: str,
        command: list[str],
        env: Mapping[str, str] | None = None,
        address: str = "",
        port: int = 0,
        access_log: Path | None = None,
    ) -> Service:
        """Start a long-running ``command`` in a host's namespace, in its own process group, logged to
        the work directory; the lab stops it."""
        log = self.work_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns(host), *command],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )  # fmt: skip
        service = Service(name, self.netns(host), proc, log, address, port, access_log)
        self.services.append(service)
        return service

    def wait_listening(self, service: Service, port: int, proto: str = "tcp", timeout: float = 15.0) -> None:
        """Until ``service`` listens on ``port``; a service that exits or never listens fails with its log."""
        deadline = time.monotonic() + timeout
        while not _listening(service.proc.pid, port, proto):
            if not service.alive():
                raise LabError(f"{service.name} exited ({service.proc.returncode}):\n{service.log_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"{service.name} not listening on {proto} {port} after {timeout:.0f}s:\n"
                               f"{service.log_tail()}")  # fmt: skip
            time.sleep(0.05)

    # -------------------------------------------------------------------------------------- teardown

    def close(self) -> list[str]:
        """Stop the services, kill what is left in the namespaces, delete them and the root-namespace
        taps, remove the work directory. Returns what could not be removed (nothing, normally)."""
        for service in reversed(self.services):
            with contextlib.suppress(OSError):
                service.stop()
        for name in self._created:
            remove_netns(name)
        for tap in self.taps:  # those still in the root namespace (moved ones went with their switch)
            subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return leftovers(self.prefix)


def leftovers(prefix: str) -> list[str]:
    """What of labs named ``prefix`` exists: namespaces, processes in them, root-namespace taps, work dirs."""
    found: list[str] = []
    for name in list_netns():
        if name.startswith(f"{prefix}-"):
            found.append(f"netns {name}")
            found += [f"process {pid} in {name}" for pid in netns_pids(name)]
    found += [
        f"link {link['ifname']}" for link in root_links() if _is_lab_link(str(link.get("ifname", "")), prefix)
    ]
    found += [f"dir {path}" for path in Path(tempfile.gettempdir()).glob(f"netlab-{prefix}*")]
    return found


def cleanup_leftovers(prefix: str) -> list[str]:
    """Remove what a crashed run with this prefix left (``nl`` for every lab): kill the processes in its
    namespaces, delete the namespaces, its taps in the root namespace and its work directories. Returns
    what was removed."""
    if len(prefix) < 2:
        raise LabError("give a lab prefix of at least two characters")
    removed = leftovers(prefix)
    for name in list_netns():
        if name.startswith(f"{prefix}-"):
            remove_netns(name)
    for link in root_links():
        name = str(link.get("ifname", ""))
        if _is_lab_link(name, prefix) and _link_kind(link) in ("tun", "veth"):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    for path in Path(tempfile.gettempdir()).glob(f"netlab-{prefix}*"):
        shutil.rmtree(path, ignore_errors=True)
    return removed


def new_prefix() -> str:
    """``nl`` and four hex digits: short enough for interface names (``nl3fa2t0``), unique enough per run."""
    return f"nl{secrets.token_hex(2)}"


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ignore Ctrl-C while tearing down (a second one must not leave half a lab); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def net_lab(prefix: str | None = None, plan: LabPlan | None = None) -> Iterator[NetLab]:
    """``with net_lab() as lab:`` the namespaces and bridges exist; add taps, services, plug taps.

    Everything goes afterwards, also after an exception or Ctrl-C in the block. A clean exit that leaves
    anything behind raises :class:`LabError` naming it.
    """
    if os.geteuid() != 0:
        raise LabError("the network lab needs root (network namespaces, bridges, taps)")
    require_tools("ip")
    prefix = prefix or new_prefix()
    if not _PREFIX_RE.match(prefix):
        raise LabError(f"lab prefix '{prefix}': 2 to 8 lower-case letters and digits, a letter first")
    work_dir = Path(tempfile.mkdtemp(prefix=f"netlab-{prefix}-"))
    lab = NetLab(prefix, plan or LabPlan(), work_dir)
    problems: list[str] = []
    try:
        lab.create()
        yield lab
    finally:
        with _sigint_deferred():
            problems = lab.close()
    if problems:
        raise LabError(f"the lab {prefix} left {', '.join(problems)}: cleanup_leftovers('{prefix}')")
