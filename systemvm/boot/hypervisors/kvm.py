"""KVM through libvirt (libvirt-python), as a CloudStack KVM host boots a system VM.

- The artifact (``.qcow2`` or ``.qcow2.bz2``) is never modified: a ``.bz2`` is unpacked once into the cache
  of unpacked artifacts (:mod:`systemvm.export.decompress`), and every VM runs on a qcow2 overlay
  (``qemu-img create -b artifact -F qcow2``) in the run's work directory.
- The domain XML is built with lxml: virtio disk and NICs, the serial console logged to a file, a
  qemu-guest-agent channel, domain type ``kvm`` or ``qemu`` (TCG) from :mod:`systemvm.boot.hypervisors.accel`.
- The arm64 flavour is an aarch64 guest as an Arm KVM host runs CloudStack's aarch64 template: machine
  ``virt``, UEFI from AAVMF (its CODE image as a read-only pflash, a per-VM copy of the empty VARS template as
  the variable store), the PL011 serial port (ttyAMA0 in the guest), the same virtio disk, NICs and agent
  channel. On a host of another architecture it runs under TCG (domain type ``qemu``) with a CPU model
  TCG emulates cheaply (cortex-a72, as CloudStack's own x86-hosted aarch64 build uses).
- The command line reaches the guest as CloudStack's KVM agent sends it: ``guest-sync``, then
  ``guest-file-open``/``guest-file-write``/``guest-file-close`` of ``/var/cache/cloud/cmdline`` through
  libvirt's agent command API (``libvirt_qemu.qemuAgentCommand``), retried until the agent answers.
- Two network modes. Production: one ``<interface type='bridge'>`` per NIC, the control NIC on CloudStack's
  link-local bridge ``cloud0`` (169.254.0.1/16). Test: QEMU user networking laid out by
  :mod:`systemvm.boot.testnet`
  (169.254.0.0/16, 3922 forwarded to a free port on 127.0.0.1, the host's 127.0.0.1
  at 169.254.0.1). libvirt's ``<interface type='user'>`` cannot forward ports, so the test NICs are QEMU
  arguments in the domain's ``<qemu:commandline>``.
- Every domain and file is named with the run prefix; ``destroy`` (also after Ctrl-C or a failed step) and
  ``cleanup_leftovers(prefix)`` remove them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lxml import etree

from systemvm import contract, hosttools
from systemvm.boot import sshwait, testnet
from systemvm.boot.hypervisors import accel
from systemvm.boot.hypervisors.base import RUN_PREFIX_BASE, BootRequest, Driver, SshTarget
from systemvm.errors import UserError
from systemvm.export import detect
from systemvm.export.decompress import unpacked_copy
from systemvm.hosttools import require_tools
from systemvm.progress import phase, say

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
CMDLINE_PATH = "/var/cache/cloud/cmdline"
CONTROL_BRIDGE = "cloud0"
WORK_SUFFIX = "-kvm"
FIRST_NIC_SLOT = 0x10  # PCI slot of the first test-mode NIC; libvirt fills the low slots


@dataclasses.dataclass(frozen=True)
class GuestArch:
    """What a flavour's domain is: QEMU's architecture, machine type and root PCI bus, and its firmware."""

    arch: str  # libvirt's <type arch=...>
    machine: str
    root_bus: str  # the id of QEMU's root PCI bus, where the test-mode NICs are pinned
    uefi: bool = False
    tcg_cpu: str | None = None  # the CPU model under TCG (None: QEMU's default)


# i386 runs as an x86_64 machine (a 32-bit kernel on a 64-bit virtual CPU), as on a CloudStack KVM host.
GUEST_ARCH = {
    "amd64": GuestArch("x86_64", "pc", "pci.0"),
    "i386": GuestArch("x86_64", "pc", "pci.0"),
    # LibvirtComputingResource/LibvirtVMDef in apache/cloudstack define aarch64 guests on "virt" with the
    # AAVMF CODE image as a pflash loader; cortex-a72 is what tools/appliance/systemvmtemplate/
    # template-base_x86_64-target_aarch64.json emulates. "virt" is a PCIe machine: its root bus is pcie.0.
    "arm64": GuestArch("aarch64", "virt", "pcie.0", uefi=True, tcg_cpu="cortex-a72"),
}
HOST_MACHINE_ARCH = {"amd64": "x86_64", "i386": "x86_64", "arm64": "aarch64"}  # Debian arch -> QEMU's


def guest_arch(flavour: str) -> GuestArch:
    if flavour not in GUEST_ARCH:
        raise UserError(f"unknown flavour '{flavour}': use one of {', '.join(GUEST_ARCH)}")
    return GUEST_ARCH[flavour]


def choose_accel(flavour: str, override: str | None = None, host: str | None = None) -> accel.AccelProbe:
    """The domain type for ``flavour``'s guest: KVM runs only guests of the host's own architecture, so a
    foreign one (aarch64 on x86_64) is TCG whatever /dev/kvm offers; otherwise :mod:`accel` decides."""
    guest = guest_arch(flavour).arch
    host = host or HOST_MACHINE_ARCH.get(hosttools.host_arch(), hosttools.host_arch())
    if guest == host:
        return accel.choose_domain_type(override)
    probe = accel.AccelProbe("qemu", f"an {guest} guest on an {host} host: TCG only")
    chosen = accel.choose_domain_type(override, environ={}) if override else probe
    if chosen.domain_type != "qemu":
        raise UserError(f"KVM cannot run an {guest} guest on an {host} host: use --domain-type qemu")
    return probe


class BootFailure(RuntimeError):
    """The VM did not reach SSH on 3922 (or the agent never answered). ``console_tail`` holds the evidence."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.console_tail:
            text += f"\n--- console log (last lines) ---\n{self.console_tail}"
        return text


# ---------------------------------------------------------------------------------------------- networks


@dataclasses.dataclass(frozen=True)
class ProductionNetwork:
    """Bridged NICs as on a CloudStack KVM host: one bridge per NIC, in NIC order.

    The control NIC sits on ``cloud0`` (link-local 169.254.0.1/16 on the host); a router's guest NIC (eth0)
    sits on the guest network's bridge. SSH goes to the control NIC's address from the command line.
    """

    bridges: tuple[str, ...]
    macs: tuple[str, ...] = ()

    @classmethod
    def for_role(
        cls, role: str, control_bridge: str = CONTROL_BRIDGE, guest_bridge: str = "cloudbr0"
    ) -> ProductionNetwork:
        control = int(contract.control_nic(role, "kvm")[3:])
        bridges = tuple(
            control_bridge if i == control else guest_bridge for i in range(contract.nic_count(role))
        )
        return cls(bridges=bridges)


Network = testnet.TestNetwork | ProductionNetwork


def link_local_mac(seed: str, index: int) -> str:
    """CloudStack gives link-local NICs MACs in 0e:00:a9:fe:xx:xx; we derive the last bytes from the name."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return "0e:00:a9:fe:" + ":".join(f"{b:02x}" for b in digest[:2])


# ---------------------------------------------------------------------------------------------- domain XML


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    name: str
    domain_type: str  # kvm | qemu
    disk: Path  # the overlay
    console_log: Path
    network: Network
    memory_mib: int = 1024
    cpus: int = 1
    run_as_root: bool = False  # test mode: QEMU as root, no relabelling of the artifact or work files
    flavour: str = "amd64"
    nvram: Path | None = None  # UEFI guests: the VM's own variable store (libvirt copies the template there)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def pinned_nic_args(args: list[str], first_slot: int = FIRST_NIC_SLOT, bus: str = "pci.0") -> list[str]:
    """Give each ``-device virtio-net-pci`` of the QEMU arguments its own PCI slot on ``bus``, in NIC order.

    QEMU places libvirt's devices at the slots libvirt chose, but an unaddressed ``-device`` from
    ``<qemu:commandline>`` may grab slot 2 first; fixed slots from 0x10 up keep both apart and keep the
    guest's eth0, eth1, ... in NIC order (the guest enumerates PCI by slot).
    """
    result: list[str] = []
    slot = first_slot
    for previous, arg in zip(["", *args], args, strict=False):
        if previous == "-device" and arg.startswith("virtio-net-pci") and ",addr=" not in arg:
            arg = f"{arg},bus={bus},addr={slot:#04x}"
            slot += 1
        result.append(arg)
    return result


def _lab_interface(devices: etree._Element, nic: testnet.NicPlan) -> None:
    """A NIC on a lab tap: ``<interface type='ethernet'>`` with the existing tap (``managed='no'``: libvirt
    neither creates nor removes it) at PCI slot ``FIRST_NIC_SLOT + index``, the slot the user-mode NICs'
    ``-device`` arguments follow too, so the guest's ethN order is the NIC order."""
    iface = _sub(devices, "interface", type="ethernet")
    _sub(iface, "mac", address=nic.mac)
    _sub(iface, "target", dev=str(nic.tap), managed="no")
    _sub(iface, "model", type="virtio")
    _sub(iface, "address", type="pci", domain="0x0000", bus="0x00", slot=f"{FIRST_NIC_SLOT + nic.index:#04x}",
         function="0x0")  # fmt: skip


def domain_xml(spec: DomainSpec) -> str:
    """The libvirt domain XML for ``spec`` (a string, ready for ``defineXML``)."""
    if spec.domain_type not in accel.DOMAIN_TYPES:
        raise UserError(f"unknown domain type '{spec.domain_type}': use kvm or qemu")
    guest = guest_arch(spec.flavour)
    root = etree.Element("domain", {"type": spec.domain_type}, nsmap={"qemu": QEMU_NS})
    _sub(root, "name", spec.name)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.cpus))
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch=guest.arch, machine=guest.machine)
    if guest.uefi:
        # The firmware as CloudStack's agent gives it (a read-only pflash), and the VM's own copy of the
        # empty variable store: no boot entry, so the firmware boots the disk's removable-media path.
        _sub(os_el, "loader", hosttools.AAVMF_CODE, readonly="yes", type="pflash")
        if spec.nvram is None:
            raise UserError(f"{spec.flavour} boots through UEFI: the domain needs an nvram path")
        _sub(os_el, "nvram", str(spec.nvram), template=hosttools.AAVMF_VARS)
    _sub(os_el, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")
    if guest.arch == "x86_64":
        _sub(features, "apic")
    if spec.domain_type == "kvm":
        _sub(root, "cpu", mode="host-passthrough")
    elif guest.tcg_cpu:
        cpu = _sub(root, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", guest.tcg_cpu, fallback="forbid")
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")

    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache="unsafe" if spec.run_as_root else "none")
    _sub(disk, "source", file=str(spec.disk))
    _sub(disk, "target", dev="vda", bus="virtio")

    if isinstance(spec.network, ProductionNetwork):
        for index, bridge in enumerate(spec.network.bridges):
            iface = _sub(devices, "interface", type="bridge")
            macs = spec.network.macs
            _sub(iface, "mac", address=macs[index] if index < len(macs) else link_local_mac(spec.name, index))
            _sub(iface, "source", bridge=bridge)
            _sub(iface, "model", type="virtio")
    else:
        for nic in spec.network.nics:
            if nic.tap:
                _lab_interface(devices, nic)

    # The serial console is logged to a file by virtlogd (root), whatever user QEMU runs as. On "virt" the
    # first serial port is the PL011 (libvirt's default there too; named so that the XML says it).
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(spec.console_log), append="off")
    if guest.machine == "virt":
        serial_target = _sub(serial, "target", type="system-serial", port="0")
        _sub(serial_target, "model", name="pl011")
    else:
        _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")

    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "source", mode="bind")
    _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)

    rng = _sub(devices, "rng", model="virtio")  # entropy for first-boot SSH host keys
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")

    if spec.run_as_root:
        seclabel = _sub(root, "seclabel", type="static", model="dac", relabel="no")
        _sub(seclabel, "label", "+0:+0")

    if isinstance(spec.network, testnet.TestNetwork):
        commandline = etree.SubElement(root, f"{{{QEMU_NS}}}commandline")
        user_nics = testnet.qemu_netdev_args(
            spec.network, user_only=True, first_slot=FIRST_NIC_SLOT, bus=guest.root_bus
        )
        for arg in pinned_nic_args(user_nics, bus=guest.root_bus):
            etree.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    return etree.tostring(root, pretty_print=True, encoding="unicode")


# ---------------------------------------------------------------------------------------------- artifacts


def prepare_artifact(artifact: Path, cache: Path | None = None) -> Path:
    """The qcow2 to use as a read-only backing file: ``artifact`` itself, or its unpacked copy in the one
    cache of unpacked artifacts (:func:`systemvm.export.decompress.unpacked_copy`). Anything that is not
    qcow2 is refused with one line.
    """
    artifact = Path(artifact).resolve()
    if not artifact.is_file():
        raise UserError(f"artifact {artifact} does not exist: build and export it first (invoke export)")
    kind = detect.kind_of(artifact)
    if kind == "bz2":
        return unpacked_copy(
            artifact,
            "qcow2",
            lambda p: detect.kind_of(p) == "qcow2",
            f"{artifact} does not hold a qcow2 disk: give KVM the *-kvm.qcow2.bz2 export",
            cache,
        )
    if kind != "qcow2":
        raise UserError(
            f"{artifact} is not a qcow2 disk (nor a bzip2 of one): give KVM the *-kvm.qcow2.bz2 export"
        )
    return artifact


def create_overlay(backing: Path, overlay: Path) -> None:
    require_tools("qemu-img")
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise UserError(f"qemu-img could not create the overlay {overlay}: {result.stderr.strip()}")


# ---------------------------------------------------------------------------------------------- guest agent


AgentSend = Callable[[str], str]  # one JSON command in, its JSON reply out


def libvirt_agent(domain: object, timeout: int = 5) -> AgentSend:
    """Send guest agent commands through libvirt (``virDomainQemuAgentCommand``), as CloudStack does."""
    import libvirt_qemu

    return lambda message: libvirt_qemu.qemuAgentCommand(domain, message, timeout, 0)


def agent_command(send: AgentSend, command: str, **arguments: object) -> object:
    """One guest agent command; its ``return`` value. An agent ``error`` reply raises RuntimeError."""
    message: dict[str, object] = {"execute": command}
    if arguments:
        message["arguments"] = arguments
    reply = json.loads(send(json.dumps(message)))
    if "error" in reply:
        raise RuntimeError(f"{command}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return")


def write_guest_file(send: AgentSend, path: str, data: bytes) -> None:
    """``guest-sync``, then ``guest-file-open``/``-write`` (base64)/``-close`` of ``path``."""
    token = random.randint(1, 2**31 - 1)
    answer = agent_command(send, "guest-sync", id=token)
    if answer != token:
        raise RuntimeError(f"guest-sync answered {answer!r} instead of {token}")
    handle = agent_command(send, "guest-file-open", path=path, mode="w")
    try:
        written = agent_command(
            send, "guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(data).decode()}
        )
        if isinstance(written, dict) and written.get("count") != len(data):
            raise RuntimeError(f"guest-file-write wrote {written.get('count')} of {len(data)} bytes")
    finally:
        agent_command(send, "guest-file-close", handle=handle)


def read_guest_file(send: AgentSend, path: str, limit: int = 65536) -> bytes:
    """``guest-file-open`` (read), ``-read`` (base64), ``-close`` of a small file in the guest."""
    handle = agent_command(send, "guest-file-open", path=path, mode="r")
    try:
        answer = agent_command(send, "guest-file-read", handle=handle, count=limit)
    finally:
        agent_command(send, "guest-file-close", handle=handle)
    if not isinstance(answer, dict) or "buf-b64" not in answer:
        raise RuntimeError(f"guest-file-read answered {answer!r}")
    return base64.b64decode(answer["buf-b64"])


BOOT_ID = "/proc/sys/kernel/random/boot_id"  # new at every boot of the guest


def deliver_cmdline(
    send: AgentSend, cmdline: str, timeout: float, alive: Callable[[], bool], path: str = CMDLINE_PATH
) -> float:
    """Retry (bounded) until the guest agent takes the command line; return the seconds it took."""
    import libvirt

    start = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - start < timeout:
        if not alive():
            raise TimeoutError("the VM stopped before its guest agent answered")
        try:
            write_guest_file(send, path, cmdline.encode() + b"\n")
            return time.monotonic() - start
        except (libvirt.libvirtError, OSError, RuntimeError, ValueError) as exc:
            last = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        time.sleep(2.0)
    raise TimeoutError(f"qemu-guest-agent did not take the command line within {timeout:.0f} s ({last})")


# ---------------------------------------------------------------------------------------------- driver


class KvmDriver(Driver):
    """``KvmDriver(network=plan).create(request)`` -> ``SshTarget``; ``destroy()`` always."""

    name = "kvm"

    def __init__(
        self,
        network: Network | None = None,
        uri: str | None = None,
        domain_type: str | None = None,
        key_file: Path | None = None,
        run_as_root: bool | None = None,
        cache: Path | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        """``on_started``: called right after the domain started (the lab plugs the VM's taps there)."""
        from systemvm.boot.hypervisors import libvirtd

        self.network = network
        self.uri = uri or os.environ.get("SYSTEMVM_KVM_URI") or libvirtd.SYSTEM_URI
        self.domain_type_override = domain_type
        self.key_file = key_file
        self.run_as_root = run_as_root
        self.cache = cache
        self.on_started = on_started
        self.conn: Any = None  # libvirt.virConnect (libvirt-python ships no type information)
        self.domain: Any = None  # libvirt.virDomain
        self.domain_name: str | None = None
        self.active_network: Network | None = None  # the NICs create() gave the domain (restart keeps them)
        self.work: Path | None = None
        self.console_path: Path | None = None
        self.timings: dict[str, float] = {}
        self.accel: accel.AccelProbe | None = None

    # -- helpers
    def _connect(self) -> Any:  # libvirt.virConnect, as self.conn (libvirt-python has no types)
        if self.conn is None:
            from systemvm.boot.hypervisors import libvirtd

            self.conn = libvirtd.connect(self.uri)
        return self.conn

    def _network_for(self, request: BootRequest) -> Network:
        args = request.boot_args
        network = self.network
        if network is None:
            network = testnet.plan_test_network(args.role, args.name)
        if isinstance(network, testnet.TestNetwork):
            if network.boot_nics() != list(args.nics):
                raise UserError(
                    "the boot arguments' NIC addresses differ from the test network plan: "
                    "build them with systemvm.boot.testnet.boot_args(plan, ...)"
                )
        elif len(network.bridges) != len(args.nics):
            raise UserError(
                f"{len(network.bridges)} bridges for {len(args.nics)} NICs: give one bridge per NIC"
            )
        return network

    def _ssh_address(self, network: Network, request: BootRequest) -> tuple[str, int]:
        if isinstance(network, testnet.TestNetwork):
            return "127.0.0.1", network.ssh_host_port
        control = int(contract.control_nic(request.boot_args.role, "kvm")[3:])
        return request.boot_args.nics[control][0], contract.SSH_PORT

    def _alive(self) -> bool:
        try:
            return bool(self.domain is not None and self.domain.isActive())
        except Exception:  # noqa: BLE001 - a vanished domain is simply not alive
            return False

    # -- Driver
    def create(self, request: BootRequest) -> SshTarget:
        try:
            return self._create(request)
        except BaseException:
            self.destroy()
            raise

    def _create(self, request: BootRequest) -> SshTarget:
        require_tools("qemu-img")
        network = self._network_for(request)
        self.active_network = network
        test_mode = isinstance(network, testnet.TestNetwork)
        run_as_root = test_mode if self.run_as_root is None else self.run_as_root
        self.accel = choose_accel(request.flavour, self.domain_type_override)
        self.domain_name = f"{request.run_prefix}-{request.boot_args.name}"
        self.work = Path(request.work_dir) / f"{self.domain_name}{WORK_SUFFIX}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.console_path = self.work / "console.log"
        backing = prepare_artifact(request.artifact, self.cache)
        overlay = self.work / "disk.qcow2"
        create_overlay(backing, overlay)
        spec = DomainSpec(
            name=self.domain_name,
            domain_type=self.accel.domain_type,
            disk=overlay,
            console_log=self.console_path,
            network=network,
            memory_mib=request.memory_mib,
            cpus=request.cpus,
            run_as_root=run_as_root,
            flavour=request.flavour,
            nvram=self.work / "VARS.fd" if guest_arch(request.flavour).uefi else None,
        )
        if spec.nvram is not None:
            require_tools(hosttools.AAVMF_CODE, hosttools.AAVMF_VARS)
        conn = self._connect()
        say(f"    domain {self.domain_name}: type {self.accel.domain_type} ({self.accel.reason})")
        started = time.monotonic()
        with phase(f"define and start {self.domain_name}"):
            self.domain = conn.defineXML(domain_xml(spec))
            self.domain.create()
        if self.on_started is not None:
            self.on_started()
        host, port = self._ssh_address(network, request)
        budget = request.ssh_timeout
        try:
            with phase("deliver the command line through qemu-guest-agent"):
                self.timings["cmdline"] = deliver_cmdline(
                    libvirt_agent(self.domain), request.boot_args.to_cmdline(), budget, self._alive
                )
            target = self._wait_ssh(host, port, request, max(1.0, budget - (time.monotonic() - started)))
        except TimeoutError as exc:
            raise BootFailure(f"{self.domain_name}: {exc}", self.console_tail()) from None
        self.timings["ssh"] = time.monotonic() - started
        return target

    def _wait_ssh(self, host: str, port: int, request: BootRequest, remaining: float) -> SshTarget:
        """Wait for a key login on 3922 (for SSH's banner without a key); where SSH answers."""
        key_file = self.key_file or request.ssh_key_file
        with phase(f"wait for SSH on 3922 ({host}:{port})"):
            if key_file is not None:
                sshwait.wait_for_ssh(host, port, Path(key_file), remaining, alive=self._alive)
            else:
                sshwait.wait_for_banner(host, port, remaining, self._alive)
        return SshTarget(host=host, port=port, key_file=Path(key_file) if key_file else None)

    def restart(self, request: BootRequest) -> SshTarget:
        """Reboot the guest cleanly through its agent (the QEMU process, its disk and its taps stay), wait
        until the agent answers from the new boot, deliver the command line again (as the host does for
        every start) and wait for SSH on 3922."""
        import libvirt

        network = self.active_network
        if self.domain is None or network is None or not self._alive():
            raise UserError("no running domain to restart: create it first")
        send = libvirt_agent(self.domain)
        before = read_guest_file(send, BOOT_ID)
        started = time.monotonic()
        self.domain.reboot(libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT)
        deadline = started + request.ssh_timeout
        try:
            with phase("wait for the guest agent of the new boot"):
                while True:
                    if not self._alive():
                        raise TimeoutError("the VM stopped instead of rebooting")
                    try:
                        if read_guest_file(send, BOOT_ID) != before:
                            break
                    except (libvirt.libvirtError, OSError, RuntimeError, ValueError):
                        pass  # rebooting: no agent yet
                    if time.monotonic() > deadline:
                        raise TimeoutError("the guest agent did not answer from a new boot")
                    time.sleep(2.0)
            with phase("deliver the command line again through qemu-guest-agent"):
                remaining = max(1.0, deadline - time.monotonic())
                deliver_cmdline(send, request.boot_args.to_cmdline(), remaining, self._alive)
                self.timings["restart_cmdline"] = time.monotonic() - started
            host, port = self._ssh_address(network, request)
            target = self._wait_ssh(host, port, request, max(1.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise BootFailure(f"{self.domain_name}: restart: {exc}", self.console_tail()) from None
        self.timings["restart_ssh"] = time.monotonic() - started
        return target

    def console_log(self) -> str:
        if self.console_path is None:
            return ""
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_log().splitlines()[-lines:])

    def destroy(self) -> None:
        if self.domain_name is not None:
            with contextlib.suppress(Exception):
                remove_domain(self._connect(), self.domain_name)
        self.domain = None
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    @classmethod
    def cleanup_leftovers(
        cls, prefix: str = RUN_PREFIX_BASE, work_dir: Path | None = None, uri: str | None = None
    ) -> list[str]:
        """Remove domains named ``prefix*`` (with their overlays) and ``prefix*-kvm`` work directories."""
        from systemvm.boot.hypervisors import libvirtd

        removed: list[str] = []
        conn = libvirtd.connect(uri or os.environ.get("SYSTEMVM_KVM_URI") or libvirtd.SYSTEM_URI)
        try:
            for domain in conn.listAllDomains(0):
                if domain.name().startswith(prefix):
                    name = domain.name()
                    for path in _disk_sources(domain.XMLDesc(0)):
                        if path.parent.name.startswith(prefix) and path.parent.name.endswith(WORK_SUFFIX):
                            shutil.rmtree(path.parent, ignore_errors=True)
                    remove_domain(conn, name)
                    removed.append(name)
        finally:
            conn.close()
        base = Path(work_dir or os.environ.get("TMPDIR", "/tmp"))
        for entry in sorted(base.glob(f"{prefix}*{WORK_SUFFIX}")):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
        return removed


def _disk_sources(xml: str) -> list[Path]:
    tree = etree.fromstring(xml.encode())
    found = tree.xpath("/domain/devices/disk/source/@file")
    return [Path(str(p)) for p in found] if isinstance(found, list) else []


def remove_domain(conn: Any, name: str) -> None:
    """Power off (hard) and undefine the domain ``name``; quiet when it is already gone."""
    import libvirt

    try:
        domain = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if domain.isActive():
            domain.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        return
    with contextlib.suppress(libvirt.libvirtError):
        domain.undefine()
