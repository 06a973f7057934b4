"""Boot one System VM end to end, as a CloudStack management server would, and always tear it down.

``with boot_system_vm(VmRequest("kvm", "amd64", "secstorage")) as vm:`` generates an SSH key pair, starts the
management listener the VM's agent connects to, plans the NICs and the boot command line, creates the VM
through the hypervisor's driver (which delivers the command line and waits for SSH on 3922), then does what
the management server does next: copies the patch (``agent.zip``, ``cloud-scripts.tgz``,
``patch-sysvms.sh``) over SSH and runs ``patch-sysvms.sh`` at once, asks the version
(``get_template_version.sh``, which waits for ``boot_up_done``) and live-patches the VM again with a payload
of its own; then it yields a :class:`BootedVM`. :func:`restart_system_vm` restarts it as CloudStack
restarts a router (the command line delivered again, then the same patch and handshake). Leaving the block
destroys everything (also on Ctrl-C or a failed step)
unless ``keep=True``.

``lab=`` (a :class:`systemvm.lab.routerlab.RouterLab` for a KVM router, a
:class:`systemvm.lab.agentlab.AgentLab` for a KVM storage or console VM): the router's guest (eth0) and
public (eth2) NICs, or the storage or console VM's public NIC (eth2), are taps of that lab, plugged onto its
bridges right after the domain started; the caller owns the lab and tears it down after the VM
(``with agentlab.lab_for(role) as lab: with boot_system_vm(VmRequest(..., lab=lab))``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from systemvm import contract, naming
from systemvm.boot import sshwait, testnet
from systemvm.boot.hypervisors.base import BootRequest, Driver, SshTarget, new_run_prefix
from systemvm.boot.listener import ManagementListener
from systemvm.boot.patch import Handshake, PatchRun
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION, Hypervisor
from systemvm.errors import UserError
from systemvm.lab.netlab import NetLab
from systemvm.profile import profile_for
from systemvm.progress import phase, say

FORMAT_OF = {"kvm": "qcow2", "xenserver": "vhd", "vmware": "ova"}
# CloudStack's names for system VMs: s-<id>-VM, v-<id>-VM, r-<id>-VM
# (b- for the internal load balancer as CloudStack names it; l- for the elastic one is this harness's choice)
NAME_LETTER = {"secstorage": "s", "consoleproxy": "v", "router": "r", "vpcrouter": "r", "dhcpsrvr": "r",
               "ilbvm": "b", "elbvm": "l"}  # fmt: skip
# VMware has no link-local network: its management NIC gets an address of this test network.
VMWARE_MGMT_NET = ipaddress.ip_network("192.168.122.0/24")


# ---------------------------------------------------------------------------------------- planning


class Lab(Protocol):
    """A network lab a KVM VM boots into (routerlab.RouterLab, agentlab.AgentLab): the lab and what the
    appliance suite is told about it."""

    lab: NetLab

    def params(self, taps: list[str]) -> dict[str, Any]: ...


@dataclasses.dataclass
class BootPlan:
    boot_args: contract.BootArgs
    driver_options: dict[str, object]
    network: testnet.TestNetwork | None = None


def vm_name(role: str, number: int = 1) -> str:
    return f"{NAME_LETTER[role]}-{number}-VM"


def _link_local_ip(name: str) -> str:
    offset = 256 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big") % 60000
    return str(contract.LINK_LOCAL_NET.network_address + offset)


def plan_boot(
    hypervisor: str,
    role: str,
    name: str,
    authorized_key: str,
    mgmt_port: int,
    lab_nics: testnet.LabNics | None = None,
) -> BootPlan:
    """NIC addresses and the command line for ``role`` on ``hypervisor``, plus the driver's options.

    KVM (test mode) uses :mod:`systemvm.boot.testnet`'s user networks (``lab_nics``: a router's guest and
    public NICs, or a storage or console VM's public NIC, on lab taps). XenServer puts the control NIC on the
    link-local network as CloudStack does; VMware puts it on the management network (eth1).
    """
    if lab_nics is not None and hypervisor != "kvm":
        raise UserError(f"the network lab is for KVM only, not {hypervisor}")
    if hypervisor == "kvm":
        network = testnet.plan_test_network(role, name, lab=lab_nics)
        args = testnet.boot_args(network, name, authorized_key, mgmt_port)
        return BootPlan(args, {"network": network}, network)
    control = int(contract.control_nic(role, hypervisor)[3:])
    count = contract.nic_count(role, hypervisor)
    nics: list[tuple[str, str]] = []
    for index in range(count):
        if index == control and hypervisor != "vmware":
            nics.append((_link_local_ip(name), str(contract.LINK_LOCAL_NET.netmask)))
        elif index == control:
            nics.append((str(VMWARE_MGMT_NET.network_address + 10), str(VMWARE_MGMT_NET.netmask)))
        else:
            nics.append(("10.1.1.1", "255.255.255.0"))
    mgmt_host = (
        str(VMWARE_MGMT_NET.network_address + 1) if hypervisor == "vmware" else contract.LINK_LOCAL_HOST
    )
    args = contract.BootArgs(
        role=role,
        name=name,
        nics=nics,
        authorized_key=authorized_key,
        mgmt_host=mgmt_host,
        mgmt_port=mgmt_port,
        extra=testnet.cheap_keys(role),
    )
    return BootPlan(args, {})


def _netmask(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr).netmask)


PLUG_TIMEOUT = 30.0  # from the domain's start until QEMU holds the taps open


def lab_nics(role: str, lab: NetLab) -> testnet.LabNics:
    """New taps of ``lab`` for a VM of ``role`` with the lab's addresses: a router's guest and public NICs,
    a storage or console VM's public NIC (its own public address); the public server is the gateway."""
    plan = lab.plan
    return testnet.LabNics(
        guest_tap=lab.add_tap("guest") if role == "router" else None,
        public_tap=lab.add_tap("public"),
        guest_ip=plan.router_guest_ip,
        guest_netmask=_netmask(plan.guest_cidr),
        public_ip=plan.public_ip(role),
        public_netmask=_netmask(plan.public_cidr),
        gateway=plan.server_ip,
    )


def _plugger(lab: Lab, taps: list[str]) -> Callable[[], None]:
    """What the driver calls right after starting the domain: each tap onto its lab bridge."""

    def plug() -> None:
        with phase(f"plug {', '.join(taps)} into the lab {lab.lab.prefix}"):
            for tap in taps:
                lab.lab.plug(tap, timeout=PLUG_TIMEOUT)

    return plug


def artifact_path(artifacts: Path, version: str, flavour: str, hypervisor: str) -> Path:
    """``artifacts/<version>/systemvmtemplate-<version>-<arch>-<hypervisor suffix>``."""
    return naming.version_dir(artifacts, version) / naming.export_name(
        version, flavour, FORMAT_OF[hypervisor]
    )


# ---------------------------------------------------------------------------------------- the handle


@dataclasses.dataclass
class BootedVM:
    hypervisor: str
    flavour: str
    role: str
    name: str
    run_prefix: str
    target: SshTarget
    key_file: Path
    listener: ManagementListener
    cmdline: str
    driver: Driver
    work_dir: Path
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    request: BootRequest | None = None
    scripts_digest: str = "md5"
    boot_patch: PatchRun | None = None
    handshake: Handshake | None = None
    live_patch: PatchRun | None = None
    restarts: int = 0
    lab: Lab | None = None
    lab_taps: list[str] = dataclasses.field(default_factory=list)

    def console_log(self) -> str:
        return self.driver.console_log()

    @property
    def last_patch(self) -> PatchRun | None:
        """The payload applied last (its scripts' marker is on the VM)."""
        return self.live_patch or self.boot_patch

    def how_to_reach(self) -> str:
        return (
            f"ssh -i {self.key_file} -p {self.target.port} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null {self.target.user}@{self.target.host}"
        )

    def suite_params(self) -> dict[str, object]:
        """The appliance suite's parameters for this VM (see systemvm/check/appliance/conftest.py)."""
        return {
            "target": self.target.testinfra_url(),
            "kind": "vm",
            "role": self.role,
            "hypervisor": self.hypervisor,
            "flavour": self.flavour,
            "name": self.name,
            "cmdline": self.cmdline,
            "ssh": {"host": self.target.host, "port": self.target.port, "key_file": str(self.key_file)},
            "listener": {"messages": list(self.listener.messages)},
            "mgmt_port": self.listener.port,
            # the last payload applied writes its id where the patch check reads it
            "payload_id": self.last_patch.payload_id if self.last_patch else None,
            "boot_patch": self.boot_patch.as_params() if self.boot_patch else None,
            "handshake": self.handshake.as_params() if self.handshake else None,
            "live_patch": self.live_patch.as_params() if self.live_patch else None,
            "scripts_digest": self.scripts_digest,
            "restarts": self.restarts,
            "lab": self.lab.params(self.lab_taps) if self.lab else None,
        }


def patch_vm(vm: BootedVM, payload_id: str, timeout: float) -> PatchRun:
    """Copy a test payload (:mod:`systemvm.boot.payload`) of its own id and run its patch-sysvms.sh at once,
    as the management server patches a VM (after a boot, and to live-patch it)."""
    from systemvm.boot import patch
    from systemvm.boot import payload as testpayload

    payload = testpayload.build_payload(
        vm.work_dir / payload_id, payload_id=payload_id, digest=vm.scripts_digest
    )
    return patch.run_patch(vm.target.host, vm.target.port, vm.key_file, payload, timeout)


def after_boot(vm: BootedVM, timeout: float, started: float) -> None:
    """What the management server does once SSH answers: the patch at once, then the version handshake
    (which waits for boot_up_done)."""
    from systemvm.boot import patch

    suffix = f"-restart{vm.restarts}" if vm.restarts else ""
    with phase("patch (patch-sysvms.sh run right after the copy, as the management server runs it)"):
        vm.boot_patch = patch_vm(vm, f"{vm.run_prefix}{suffix}", timeout)
    vm.timings["patch"] = vm.boot_patch.seconds
    with phase("version handshake (get_template_version.sh)"):
        vm.handshake = patch.handshake(vm.target.host, vm.target.port, vm.key_file)
    vm.timings["boot_up_done"] = time.monotonic() - started


def restart_system_vm(vm: BootedVM, timeout: float = 300.0) -> None:
    """Restart the VM as CloudStack restarts a router: a clean reboot, the command line delivered again
    through the hypervisor, SSH on 3922 awaited, then the patch and the handshake as after its first boot."""
    if vm.request is None:
        raise UserError("this VM was not booted by boot_system_vm: nothing to restart it with")
    started = time.monotonic()
    with phase(f"restart {vm.name} (command line delivered again)"):
        vm.target = dataclasses.replace(vm.driver.restart(vm.request), key_file=vm.key_file)
    vm.restarts += 1
    vm.timings["restart_ssh"] = time.monotonic() - started
    after_boot(vm, timeout, started)
    vm.timings["restart_boot_up_done"] = vm.timings.pop("boot_up_done")
    vm.live_patch = None


@dataclasses.dataclass
class VmRequest:
    """What :func:`boot_system_vm` boots and how: the harness's one context (as mkosi passes its context
    to every phase). ``artifact``: the file to boot (default: the export of ``version`` under
    ``artifacts``); ``lab``: the network lab a KVM router, storage VM or console proxy boots into (the
    caller owns it); ``console_to``: where the whole console log goes when the boot fails (it lives in the
    run's work directory, which the teardown removes; the error itself quotes only its last lines)."""

    hypervisor: str
    flavour: str
    role: str
    version: str = DEFAULT_VERSION
    artifacts: Path | None = None
    artifact: Path | None = None
    work_dir: Path | None = None
    keep: bool = False
    with_patch: bool = True
    ssh_timeout: float = 900.0  # under TCG on a loaded host an i386 guest answered at 387 s in CI
    patch_timeout: float = 300.0
    memory_mib: int = 1024
    run_prefix: str | None = None
    driver_options: dict[str, object] = dataclasses.field(default_factory=dict)
    lab: Lab | None = None
    console_to: Path | None = None

    def checked_artifact(self) -> Path:
        """The artifact to boot, once hypervisor, flavour, role and lab are known to fit; UserError if not."""
        if self.hypervisor not in FORMAT_OF:
            raise UserError(f"unknown hypervisor '{self.hypervisor}': use one of {', '.join(FORMAT_OF)}")
        if self.flavour not in naming.FLAVOURS:
            raise UserError(f"unknown flavour '{self.flavour}': use one of {', '.join(naming.FLAVOURS)}")
        if self.role not in contract.ROLES:
            raise UserError(f"unknown role '{self.role}': use one of {', '.join(contract.ROLES)}")
        if self.lab is not None and (self.hypervisor != "kvm" or self.role not in testnet.LAB_ROLES):
            raise UserError(
                f"the network lab takes a KVM {', '.join(testnet.LAB_ROLES)}, not a {self.role} on "
                f"{self.hypervisor}"
            )
        artifact = self.artifact or artifact_path(
            self.artifacts or ARTIFACTS_DIR, self.version, self.flavour, self.hypervisor
        )
        if not Path(artifact).is_file():
            raise UserError(
                f"artifact {artifact} does not exist: build and export it first (invoke build, invoke export)"
            )
        return Path(artifact)


def _driver_for(request: VmRequest, plan: BootPlan, key_file: Path) -> Driver:
    """The hypervisor's driver with the plan's options, the harness's key (KVM) and the lab's plugging."""
    from systemvm.boot.hypervisors.registry import get_driver

    options = dict(plan.driver_options)
    if request.hypervisor == "kvm":
        options.setdefault("key_file", key_file)
    if request.lab is not None and plan.network is not None:
        options["on_started"] = _plugger(request.lab, plan.network.taps)
    options.update(request.driver_options)
    return get_driver(request.hypervisor, **options)


def _keep_console(driver: Driver, prefix: str, exc: BaseException, console_to: Path | None) -> None:
    """A failed boot's console: all of it to ``console_to``, its tail on the terminal (unless the error
    quotes it already)."""
    if console_to is not None:
        with contextlib.suppress(OSError):
            Path(console_to).write_text(driver.console_log())
    if not getattr(exc, "console_tail", None):
        tail = "\n".join(driver.console_log().splitlines()[-20:])
        if tail:
            say(f"--- console log of {prefix} (last lines) ---\n{tail}")


@contextlib.contextmanager
def boot_system_vm(request: VmRequest) -> Iterator[BootedVM]:
    """Boot the request's VM; yield the :class:`BootedVM`; destroy it on exit (unless ``keep``)."""
    artifact = request.checked_artifact()
    prefix = request.run_prefix or new_run_prefix()
    base = Path(request.work_dir) if request.work_dir else Path(tempfile.gettempdir())
    run_dir = base / f"{prefix}-harness"
    run_dir.mkdir(parents=True, exist_ok=True)
    listener = ManagementListener().start()
    driver: Driver | None = None
    created = False
    try:
        key_file, public_key = sshwait.make_keypair(run_dir)
        name = vm_name(request.role)
        nics = lab_nics(request.role, request.lab.lab) if request.lab is not None else None
        plan = plan_boot(request.hypervisor, request.role, name, public_key, listener.port, nics)
        driver = _driver_for(request, plan, key_file)
        boot = BootRequest(
            artifact=artifact,
            flavour=request.flavour,
            boot_args=plan.boot_args,
            run_prefix=prefix,
            work_dir=base,
            memory_mib=request.memory_mib,
            ssh_timeout=request.ssh_timeout,
        )
        started = time.monotonic()
        with phase(f"boot {request.role} ({request.flavour}) on {request.hypervisor} as {prefix}-{name}"):
            created = True
            target = driver.create(boot)
        vm = BootedVM(
            hypervisor=request.hypervisor,
            flavour=request.flavour,
            role=request.role,
            name=name,
            run_prefix=prefix,
            target=target if target.key_file else dataclasses.replace(target, key_file=key_file),
            key_file=key_file,
            listener=listener,
            cmdline=plan.boot_args.to_cmdline(),
            driver=driver,
            work_dir=run_dir,
            timings={"ssh": time.monotonic() - started, **driver.timings},
            request=boot,
            scripts_digest=profile_for(request.version).scripts_digest,
            lab=request.lab,
            lab_taps=plan.network.taps if plan.network is not None else [],
        )
        if request.with_patch:
            after_boot(vm, request.patch_timeout, started)
            with phase("live patch (the files copied again, patch-sysvms.sh run)"):
                vm.live_patch = patch_vm(vm, f"{prefix}-live", request.patch_timeout)
            vm.timings["live_patch"] = vm.live_patch.seconds
        yield vm
    except BaseException as exc:
        if driver is not None and created:
            _keep_console(driver, prefix, exc, request.console_to)
        raise
    finally:
        if not request.keep:
            if driver is not None:
                with phase(f"destroy {prefix}"):
                    driver.destroy()
            listener.stop()
            shutil.rmtree(run_dir, ignore_errors=True)


def destroy_by_prefix(prefix: str, hypervisors: tuple[str, ...] = (Hypervisor.KVM,)) -> list[str]:
    """Remove what runs named ``prefix*`` left on each hypervisor, plus their harness directories."""
    from systemvm.boot.hypervisors.registry import driver_class

    removed: list[str] = []
    for hypervisor in hypervisors:
        removed += driver_class(hypervisor).cleanup_leftovers(prefix)
    for entry in sorted(Path(tempfile.gettempdir()).glob(f"{prefix}*-harness")):
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(str(entry))
    return removed


def flavour_of(artifact: Path) -> str:
    """``amd64`` or ``i386`` from an artifact name (``...-x86_64-kvm.qcow2.bz2``, ``...-i386-...``)."""
    for flavour, arch in naming.ARCH_OF.items():
        if f"-{arch}" in Path(artifact).name:
            return flavour
    return "amd64"


def kvm_artifacts_from_env(variable: str = "SYSTEMVM_KVM_QCOW2") -> list[Path]:
    """The colon-separated artifact paths in ``$SYSTEMVM_KVM_QCOW2`` (empty when unset)."""
    import os

    return [Path(p) for p in os.environ.get(variable, "").split(":") if p]
