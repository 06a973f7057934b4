"""The VMs the e2e tests share, booting in the background from the start of the test session.

A TCG boot costs a core for minutes, and a test that boots alone leaves the host's other core idle while it
waits. So every VM the selected tests need (each test declares its VM with ``@pytest.mark.vm(name)``) starts
booting when the session starts, beside the host-side tests that run first (exports read back, seeding...),
never more than :data:`BOOT_SLOTS` booting at once (a VM gives its slot back once it is up). Each test waits
for its own VM and stops it when done. What each VM is, once, lives in :data:`SPECS`: the exported disks read
back by independent readers, the VM that waits for a late command line, and the KVM VM (libvirt, patch, test
agent) the can-fail cases break.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from systemvm.boot import sshwait
from systemvm.boot.patch import ssh_session
from systemvm.boot.qemu import QemuVM
from systemvm.defaults import DEFAULT_VERSION
from tests.e2e import artifacts

BOOT_SLOTS = 2  # TCG guests booting at once: host-side tests (exports read back, seeding) run beside them
LISTENING = "listening for a command line from the host"  # the guest's console once its first wait is over
BOOT_TIMEOUT = 1200.0


def _to_qcow2(disk: Path, fmt: str, out: Path) -> Path:
    """``disk`` read by qemu-img's own ``fmt`` reader into a qcow2 QEMU boots; the extracted disk goes."""
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "qcow2", str(disk), str(out)], check=True)
    disk.unlink()
    return out


def vhd_to_qcow2(artifact: Path, tmp: Path) -> Path:
    """The -xen.vhd.bz2 read back by Python's bz2 and qemu-img's own VHD reader (``-f vpc``)."""
    vhd = tmp / "disk.vhd"
    with bz2.open(artifact, "rb") as src, open(vhd, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    return _to_qcow2(vhd, "vpc", tmp / "from-vhd.qcow2")


def hyperv_to_qcow2(artifact: Path, tmp: Path) -> Path:
    """The -hyperv.vhd.zip's VHD taken out with Python's zipfile and read by qemu-img's VHD reader."""
    vhd = tmp / "hyperv.vhd"
    with zipfile.ZipFile(artifact) as zf:
        (member,) = zf.infolist()
        with zf.open(member) as src, open(vhd, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    return _to_qcow2(vhd, "vpc", tmp / "from-hyperv.qcow2")


def ova_to_qcow2(artifact: Path, tmp: Path) -> Path:
    """The OVA's VMDK taken out with Python's tarfile and read by qemu-img's VMDK reader."""
    with tarfile.open(artifact) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".vmdk"))
        tar.extract(member, tmp, filter="data")
    return _to_qcow2(tmp / member.name, "vmdk", tmp / "from-vmdk.qcow2")


class Shell:
    """One SSH session (:func:`systemvm.boot.patch.ssh_session`) kept open for a can-fail module's breaks and
    repairs: a case that breaks the key or sshd must not lock the test out of repairing it."""

    def __init__(self, host: str, port: int, key_file: Path) -> None:
        self._stack = contextlib.ExitStack()
        self.client = self._stack.enter_context(ssh_session(host, port, key_file))

    def run(self, command: str) -> str:
        """``command``'s output; AssertionError naming it and its stderr when it exits non-zero."""
        _, stdout, stderr = self.client.exec_command(command, timeout=120)
        status = stdout.channel.recv_exit_status()
        assert status == 0, f"`{command}` exited {status}: {stderr.read().decode()[-500:]}"
        return stdout.read().decode()

    def close(self) -> None:
        self._stack.close()


def overridden(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a VM's suite parameters, or a part of them) with each override: a dotted key
    (``live_patch.exit_status``) sets a nested value, a dict is merged into the dict of that name, any other
    value replaces."""
    out = dict(base)
    for key, value in overrides.items():
        outer, _, inner = key.partition(".")
        if inner:
            out[outer] = {**out[outer], inner: value}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def healthy_run(
    member: tuple[Any, dict[str, Any], Any], factory: pytest.TempPathFactory, select: list[str] | None
) -> dict[str, tuple[str, str]]:
    """The checks ``select`` (all when None) on a can-fail module's VM before any case breaks it: what each
    case's failure is compared with."""
    _, params, _ = member
    return check_results(params, factory.mktemp("healthy"), "healthy", select)


def check_results(
    params: dict[str, Any], work: Path, label: str, select: list[str] | None
) -> dict[str, tuple[str, str]]:
    """Run the appliance checks ``select`` (all when None) with ``params``; per check (result, message).
    ``label`` names the reports: a case's own words will do (a ``/`` in them would make it a path)."""
    from systemvm.check.report import parse_junit
    from systemvm.check.suite import run_checks

    junit = run_checks(params, work, re.sub(r"[^\w.'-]+", "-", label), select)
    return {c.name: (c.result, c.message) for c in parse_junit(junit).checks}


def assert_failed(
    case: str, results: dict[str, tuple[str, str]], expected: list[str], work: Path
) -> set[str]:
    """A can-fail case's verdict: exactly the ``expected`` checks ran and each failed; their names."""
    names = {node.split("::")[1] for node in expected}
    assert set(results) == names, f"{case}: ran {sorted(results)}"
    not_failed = sorted(n for n in names if results[n][0] not in ("failed", "error"))
    assert not not_failed, f"{case}: these checks did not fail: {not_failed} (see {work})"
    return names


def assert_case_fails(
    case: str,
    results: dict[str, tuple[str, str]],
    expected: list[str],
    healthy: dict[str, tuple[str, str]],
    work: Path,
    what: str,
) -> None:
    """:func:`assert_failed`, and each of those checks passed on the healthy ``what``: the break failed it."""
    for name in assert_failed(case, results, expected, work):
        assert healthy[name][0] == "passed", f"{case}: {name} did not pass on the healthy {what}"


@contextlib.contextmanager
def lab_member(vm_pool: VmPool, name: str, what: str) -> Iterator[tuple[Any, dict[str, Any], Shell]]:
    """The pool's VM ``name`` (a ``what`` booted inside its lab in the background since the session
    started): the booted VM, its suite parameters and a :class:`Shell` on it. Released afterwards; its lab
    must then be gone."""
    from systemvm.check.suite import PACKAGES_DIR
    from systemvm.lab import netlab

    member = pool_member(vm_pool, name)
    try:
        booted = member.ready()
        assert booted.lab is not None, f"the pool's {what} was booted without its lab"
        params = {**booted.suite_params(), "packages_dir": str(PACKAGES_DIR)}
        shell = Shell(booted.target.host, booted.target.port, booted.key_file)
        try:
            yield booted, params, shell
        finally:
            shell.close()
    finally:
        vm_pool.release(name)
        prefix = member.vm.lab.lab.prefix if member.vm is not None and member.vm.lab else None
        if prefix:
            assert netlab.leftovers(prefix) == [], f"the lab {prefix} was left behind"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One shared VM. ``kind``: ``plain`` (plain QEMU, :class:`QemuVM`) or ``kvm`` (through libvirt with the
    harness: patch, test agent, management listener). ``artifact``: ``raw`` or an export format; ``disk``
    turns it into what QEMU boots. ``deliver``: the pool sends the command line as soon as the guest agent
    answers (``False``: the test does, later). ``lab``: the VM's public NIC (and a router's guest NIC) are on
    the taps of a network lab the pool builds first and tears down after the VM (as root; without root the
    VM boots without it and its lab checks skip)."""

    kind: str
    flavour: str
    artifact: str
    role: str
    name: str = ""
    disk: Callable[[Path, Path], Path] | None = None
    deliver: bool = True
    lab: bool = False  # inside the network lab (systemvm.lab.agentlab.lab_for), built before its boot


SPECS = {
    # Each exported disk that is not the KVM qcow2 (which the matrix boots) boots once, read back by an
    # independent reader, as the VM of a test that needs a VM anyway (issue 4's and 16's boot proofs):
    # - the amd64 -xen.vhd.bz2 through Python's bz2 and ``qemu-img -f vpc``: the late-command-line VM
    #   (tests/e2e/test_late_cmdline.py checks SSH on 3922 under the name sent);
    # - the amd64 -hyperv.vhd.zip through Python's zipfile and ``qemu-img -f vpc``: the can-fail VM, whose
    #   healthy run passes the whole appliance suite (tests/e2e/test_suite_can_fail_vm.py);
    # - the amd64 OVA's VMDK through Python's tarfile and qemu-img's VMDK reader: the router inside the
    #   network lab whose traffic checks the can-fail cases break (tests/e2e/test_router_traffic_can_fail.py;
    #   its healthy run passes the whole appliance suite too): its 17 cases run the checks on the guest one
    #   after the other, so it is the cheaper flavour to emulate (on i386 the module took 580 s);
    # - the i386 OVA's VMDK the same way: the console proxy inside the network lab whose port checks the
    #   can-fail cases break (tests/e2e/test_console_ports_can_fail.py: four cases of one rule each).
    # The can-fail secstorage boots inside the lab too (as root), so its storage checks run and break there.
    # A boot of its own for each would repeat those boots at a TCG boot's price.
    "late": Spec("plain", "amd64", "vhd", "secstorage", "s-21-VM", vhd_to_qcow2, deliver=False),
    "canfail": Spec("kvm", "amd64", "hyperv", "secstorage", disk=hyperv_to_qcow2, lab=True),
    "router": Spec("kvm", "amd64", "ova", "router", disk=ova_to_qcow2, lab=True),
    "console": Spec("kvm", "i386", "ova", "consoleproxy", disk=ova_to_qcow2, lab=True),
}


class PoolVM:
    """One VM of the pool, booting in its own thread. :meth:`ready` waits for it and re-raises a failed boot.

    ``vm`` is the :class:`QemuVM` (plain) or the harness's ``BootedVM`` (kvm); ``key`` the SSH key of a
    plain VM."""

    def __init__(self, name: str, spec: Spec, source: Path, work: Path) -> None:
        self.name, self.spec, self.source, self.work = name, spec, source, work
        self.key: Path | None = None
        self.vm: Any = None
        self.error: BaseException | None = None
        self.boot_seconds = 0.0
        self._up = threading.Event()
        self._stack = contextlib.ExitStack()
        self._stopped = threading.Event()
        self.run_prefix = ""

    def boot(self, slots: threading.Semaphore) -> None:
        """The thread's body: take a boot slot, boot, give the slot back once the VM is up."""
        started = time.monotonic()
        try:
            with slots:
                if self._stopped.is_set():
                    return
                if self.spec.kind == "kvm":
                    self._boot_kvm()
                else:
                    self._boot_plain()
        except BaseException as exc:  # noqa: BLE001 - handed to the test that waits for this VM
            self.error = exc
        finally:
            self.boot_seconds = time.monotonic() - started
            self._up.set()

    def _boot_plain(self) -> None:
        self.key, public = sshwait.make_keypair(self.work / "keys")
        disk = self.spec.disk(self.source, self.work) if self.spec.disk else self.source
        (self.work / "vm").mkdir()
        vm = QemuVM(
            disk, role=self.spec.role, authorized_key=public, name=self.spec.name, work_dir=self.work / "vm"
        )
        self.vm = vm
        vm.start()
        if self.spec.deliver:
            vm.deliver_cmdline(timeout=BOOT_TIMEOUT)
            vm.wait_ssh(self.key, timeout=BOOT_TIMEOUT)
            return
        deadline = time.monotonic() + BOOT_TIMEOUT
        while LISTENING not in vm.console_log():  # booted as far as it goes without a command line
            if not vm.alive() or self._stopped.is_set() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the boot never reached its wait\n{vm.console_tail()}")
            time.sleep(2)

    def _boot_kvm(self) -> None:
        from systemvm.boot.harness import VmRequest, boot_system_vm
        from systemvm.boot.hypervisors.base import new_run_prefix

        self.run_prefix = new_run_prefix()
        version = artifacts.version() or DEFAULT_VERSION
        artifact = self.spec.disk(self.source, self.work) if self.spec.disk else self.source
        lab = None
        if self.spec.lab and os.geteuid() == 0:
            from systemvm.lab.agentlab import lab_for

            # closed after the VM: the stack unwinds backwards
            lab = self._stack.enter_context(lab_for(self.spec.role))
        self.vm = self._stack.enter_context(
            boot_system_vm(VmRequest(
                "kvm", self.spec.flavour, self.spec.role, artifact=artifact, work_dir=self.work,
                version=version, run_prefix=self.run_prefix, ssh_timeout=BOOT_TIMEOUT, lab=lab,
            ))
        )  # fmt: skip

    def ready(self) -> Any:
        """The VM once it is up (re-raises its failed boot)."""
        self._up.wait()
        if self.error is not None:
            raise self.error
        return self.vm

    def stop(self) -> None:
        """End the VM, also while it is still booting (its boot then fails and cleans up after itself)."""
        self._stopped.set()
        if self.spec.kind == "kvm" and not self._up.is_set() and self.run_prefix:
            from systemvm.boot.hypervisors.kvm import KvmDriver

            KvmDriver.cleanup_leftovers(self.run_prefix, work_dir=self.work)
            self._up.wait(timeout=60)
        if isinstance(self.vm, QemuVM):
            self.vm.stop()
        self._stack.close()


class VmPool:
    """Boot every wanted VM in the background (:meth:`start`); ``get(name)``; ``stop`` ends them all."""

    def __init__(self, wanted: list[str], work: Path) -> None:
        unknown = sorted(set(wanted) - set(SPECS))
        if unknown:
            raise ValueError(f"unknown vm {unknown}: use one of {sorted(SPECS)}")
        self.wanted = [n for n in SPECS if n in wanted]  # SPECS order: what boots soonest or waits longest
        self.work = work
        self.vms: dict[str, PoolVM] = {}
        self.missing: dict[str, str] = {}
        self._slots = threading.Semaphore(BOOT_SLOTS)

    def start(self) -> None:
        for name in self.wanted:
            spec = SPECS[name]
            if spec.artifact == "raw":
                source = artifacts.raw_disks().get(spec.flavour)
            else:
                source = artifacts.export(spec.flavour, spec.artifact)
            if source is None:
                self.missing[name] = f"no {spec.flavour} {spec.artifact} artifact (set SYSTEMVM_ARTIFACTS)"
                continue
            work = self.work / name
            work.mkdir(parents=True)
            member = PoolVM(name, spec, source, work)
            self.vms[name] = member
            threading.Thread(
                target=member.boot, args=(self._slots,), daemon=True, name=f"boot-{name}"
            ).start()
            time.sleep(1)  # keep the start order: the semaphore serves threads in the order they ask

    def get(self, name: str) -> PoolVM | None:
        return self.vms.get(name)

    def release(self, name: str) -> None:
        """Stop one VM as soon as its tests are done (the cores go to the VMs still booting)."""
        member = self.vms.get(name)
        if member is not None:
            member.stop()

    def stop(self) -> None:
        for member in self.vms.values():
            member.stop()


def pool_member(pool: VmPool, name: str) -> PoolVM:
    """The pool's VM ``name``; the test skips when its artifact was not built (SYSTEMVM_ARTIFACTS unset)."""
    member = pool.get(name)
    if member is None:
        pytest.skip(pool.missing.get(name, f"{name} is not in the pool"))
    return member
