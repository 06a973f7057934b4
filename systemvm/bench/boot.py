"""Bench sections ``boot``, ``kvm``, ``xenserver`` and ``vmware``: plain QEMU to SSH, libvirt define to
SSH, and each hypervisor driver's API flow."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from systemvm import naming
from systemvm.bench.table import Rows
from systemvm.boot import sshwait
from systemvm.boot.harness import VmRequest, artifact_path, boot_system_vm, flavour_of, kvm_artifacts_from_env
from systemvm.boot.qemu import QemuVM
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION, UEFI_FLAVOURS, Flavour, Hypervisor, Role
from systemvm.errors import UserError
from systemvm.progress import say


def bench_qemu_ssh(flavours: list[str], version: str, artifacts: Path) -> Rows:
    rows: Rows = []
    for flavour in flavours:
        if flavour in UEFI_FLAVOURS:  # plain QEMU here boots the x86 flavours' BIOS disks
            rows.append(
                (f"{flavour}: QEMU start -> SSH on 3922 (plain QEMU)", "skipped: see the kvm section")
            )
            continue
        disk = naming.raw_disk(artifacts, version, flavour)
        with tempfile.TemporaryDirectory(prefix="svmt-bench-") as tmp:
            key, public = sshwait.make_keypair(Path(tmp))
            with QemuVM(disk, role="secstorage", authorized_key=public, work_dir=Path(tmp)) as vm:
                seconds = vm.wait_ssh(key, timeout=600)
        rows.append((f"{flavour}: QEMU start -> SSH on 3922 (plain QEMU)", f"{seconds:.1f} s"))
    return rows


def bench_kvm(artifacts: list[Path] | None = None, role: str = "secstorage") -> list[tuple[str, str]]:
    """Rows for ``invoke bench``: seconds from ``defineXML`` to SSH on 3922, per flavour, through libvirt."""
    from systemvm.boot.hypervisors import accel

    paths = artifacts if artifacts is not None else kvm_artifacts_from_env()
    if not paths:
        defaults = [artifact_path(ARTIFACTS_DIR, DEFAULT_VERSION, f, "kvm") for f in naming.FLAVOURS]
        paths = [p for p in defaults if p.is_file()]
    if not paths:
        return [("kvm boot (define to SSH on 3922)", "skipped: no KVM artifact (set SYSTEMVM_KVM_QCOW2)")]
    rows = [("kvm domain type", accel.domain_type())]
    for path in paths:
        flavour = flavour_of(path)
        try:
            with boot_system_vm(VmRequest("kvm", flavour, role, artifact=path, with_patch=False)) as vm:
                timings = dict(vm.timings)
        except (UserError, RuntimeError) as exc:
            rows.append(
                (f"kvm boot {flavour} {role} (define to SSH on 3922)", f"failed: {str(exc).splitlines()[0]}")
            )
            continue
        rows.append(
            (
                f"kvm boot {flavour} {role}: define to command line via guest agent",
                f"{timings['cmdline']:.1f} s",
            )
        )
        rows.append((f"kvm boot {flavour} {role}: define to SSH on 3922", f"{timings['ssh']:.1f} s"))
    return rows


def bench_api_flow(hypervisor: Hypervisor, artifact: Path) -> Rows:
    """The driver's API flow (import, create, start, destroy) on the configured endpoint, as ``invoke
    matrix`` runs it; a one-line skip when no connection settings are configured for ``hypervisor``."""
    from systemvm.boot.hypervisors import settings
    from systemvm.boot.hypervisors.base import BootRequest, new_run_prefix
    from systemvm.boot.hypervisors.registry import get_driver
    from systemvm.contract import BootArgs

    if not settings.is_configured(hypervisor):
        line = (
            f"skipped: no [{hypervisor}] settings (SYSTEMVM_{hypervisor.upper()}_URL or "
            f"[{hypervisor}] in {settings.config_path()})"
        )
        say(f"    {line}")
        return [(f"{hypervisor}", line)]
    rows: Rows = []
    with tempfile.TemporaryDirectory(prefix="svmt-bench-") as tmp:
        _, public = sshwait.make_keypair(Path(tmp))
        request = BootRequest(
            artifact=artifact,
            flavour=Flavour.AMD64,
            boot_args=BootArgs(Role.SECSTORAGE, "s-1-VM", [("169.254.3.4", "255.255.0.0")], public),
            run_prefix=new_run_prefix(),
            work_dir=Path(tmp),
        )
        driver = get_driver(hypervisor)
        start = time.monotonic()
        try:
            driver.import_and_start(request)
            rows.append((f"{hypervisor}: import to started", f"{time.monotonic() - start:.2f} s"))
            rows += [(f"{hypervisor}: {k}", f"{v:.2f} s") for k, v in sorted(driver.timings.items())]
        finally:
            start = time.monotonic()
            driver.destroy()
            rows.append((f"{hypervisor}: destroy", f"{time.monotonic() - start:.2f} s"))
    return rows
