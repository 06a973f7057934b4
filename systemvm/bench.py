"""``invoke bench``: timings and sizes to compare between commits. It prints; it never asserts."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from systemvm import defaults, naming
from systemvm.boot import sshwait
from systemvm.boot.qemu import QemuVM
from systemvm.build.image import BuildManifest, build_flavours
from systemvm.defaults import Flavour, Hypervisor, Role
from systemvm.progress import human_bytes, say

Rows = list[tuple[str, str]]


@contextlib.contextmanager
def cold_cache() -> Iterator[None]:
    """Move the package/bootstrap cache aside so a build starts cold.

    After a successful cold build its fresh cache stays (the warm build that follows uses it) and the old
    one is deleted; after a failure the old cache is put back.
    """
    root = defaults.cache_root()
    aside = root.with_name(root.name + ".bench-aside")
    if root.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(root, aside)
    try:
        yield
    except BaseException:
        if aside.exists():
            shutil.rmtree(root, ignore_errors=True)
            os.replace(aside, root)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def flavour_of(manifest: BuildManifest) -> str:
    return str(manifest["flavour"])


def bench_build(flavours: list[str], version: str, artifacts: Path, cold: bool) -> Rows:
    rows: Rows = []
    if cold:
        with cold_cache():
            start = time.monotonic()
            for manifest in build_flavours(flavours, version, artifacts):
                rows.append((f"{flavour_of(manifest)}: build cold", f"{manifest['build_seconds']:.0f} s"))
            rows.append((f"build cold ({'+'.join(flavours)})", f"{time.monotonic() - start:.0f} s"))
    start = time.monotonic()
    for manifest in build_flavours(flavours, version, artifacts):
        flavour = flavour_of(manifest)
        sizes = manifest["sizes"]
        rows += [
            (f"{flavour}: build warm", f"{manifest['build_seconds']:.0f} s"),
            (f"{flavour}: root filesystem used", human_bytes(sizes["rootfs_used_bytes"])),
            (f"{flavour}: raw disk allocated", human_bytes(sizes["raw_disk_allocated_bytes"])),
        ]
    rows.append((f"build warm ({'+'.join(flavours)})", f"{time.monotonic() - start:.0f} s"))
    return rows


def bench_qemu_ssh(flavours: list[str], version: str, artifacts: Path) -> Rows:
    rows: Rows = []
    for flavour in flavours:
        disk = naming.raw_disk(artifacts, version, flavour)
        with tempfile.TemporaryDirectory(prefix="svmt-bench-") as tmp:
            key, public = sshwait.make_keypair(Path(tmp))
            with QemuVM(disk, role="secstorage", authorized_key=public, work_dir=Path(tmp)) as vm:
                seconds = vm.wait_ssh(key, timeout=600)
        rows.append((f"{flavour}: QEMU start -> SSH on 3922 (plain QEMU)", f"{seconds:.1f} s"))
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


def run_section(name: str, fn: Callable[[], Rows]) -> Rows:
    say(f"==> bench: {name}")
    try:
        return fn()
    except Exception as exc:  # a failing section is reported, the others still run
        return [(f"{name}", f"FAILED: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")]


def print_table(rows: Rows) -> None:
    width = max(len(k) for k, _ in rows) if rows else 10
    print(f"\n{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 20}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def bench_clean_room(flavours: list[str]) -> Rows:
    """The clean-room check of host-packages.txt: what each stage cost, and whether the root was reused."""
    from systemvm.cleanroom import check_host_packages

    result = check_host_packages(flavours)
    rows: Rows = [(f"clean room: {stage}", f"{seconds:.0f} s") for stage, seconds in result.seconds.items()]
    rows.append(("clean room: root", "reused" if result.root_reused else "made"))
    rows.append(("clean room", "PASS" if result.ok else "FAIL"))
    return rows


def bench_sbom(flavours: list[str], version: str, artifacts: Path) -> Rows:
    """Per flavour with a build manifest: time to make the SBOM and to validate it, its size and counts."""
    from systemvm.export import sbom

    rows: Rows = []
    for flavour in flavours:
        path = naming.manifest(artifacts, version, flavour)
        if not path.is_file():
            rows.append((f"{flavour}: SBOM", f"skipped: no {path.name}; run 'invoke build' first"))
            continue
        manifest = json.loads(path.read_text())
        start = time.monotonic()
        text = sbom.render_sbom(manifest, int(manifest.get("source_date_epoch", 0)))
        made = time.monotonic() - start
        start = time.monotonic()
        errors = sbom.schema_errors(text)
        checked = time.monotonic() - start
        components = json.loads(text)["components"]
        files = sum(1 for c in components if c["type"] == "file")
        rows += [
            (f"{flavour}: SBOM generation", f"{made:.2f} s"),
            (
                f"{flavour}: SBOM schema validation",
                f"{checked:.2f} s, {'valid' if not errors else errors[0]}",
            ),
            (
                f"{flavour}: SBOM size",
                f"{human_bytes(len(text.encode()))}, {len(components) - files} packages, {files} artifacts",
            ),  # fmt: skip
        ]
    return rows


def bench(flavours: list[str], version: str, artifacts: Path, sections: list[str], cold: bool) -> Rows:
    rows: Rows = []
    vdir = naming.version_dir(artifacts, version)
    if "build" in sections:
        rows += run_section("build", lambda: bench_build(flavours, version, artifacts, cold))
    if "boot" in sections:
        rows += run_section("boot", lambda: bench_qemu_ssh(flavours, version, artifacts))
    if "export" in sections:
        from systemvm.export.export import bench_export

        for flavour in flavours:
            with tempfile.TemporaryDirectory(prefix="svmt-bench-", dir=vdir) as tmp:
                raw = naming.raw_disk(artifacts, version, flavour)
                rows += [
                    (f"{flavour}: {k}", v)
                    for k, v in run_section("export", functools.partial(bench_export, raw, Path(tmp)))
                ]
    if "sbom" in sections:
        rows += run_section("sbom", lambda: bench_sbom(flavours, version, artifacts))
    if "kvm" in sections:
        from systemvm.boot.harness import bench_kvm

        qcow2 = [vdir / naming.export_name(version, f, "qcow2") for f in flavours]
        rows += run_section("kvm", lambda: bench_kvm([p for p in qcow2 if p.exists()]))
    if "router" in sections:
        from systemvm.boot.routerlab import bench_router

        for flavour in flavours:
            disk = vdir / naming.export_name(version, flavour, "qcow2")
            rows += run_section("router", functools.partial(bench_router, flavour, disk))
    for hypervisor, fmt in ((Hypervisor.XENSERVER, "vhd"), (Hypervisor.VMWARE, "ova")):
        if hypervisor in sections:
            artifact = vdir / naming.export_name(version, Flavour.AMD64, fmt)
            rows += run_section(hypervisor, functools.partial(bench_api_flow, hypervisor, artifact))
    if "seed" in sections:
        from systemvm.seed.install import bench_seed

        rows += run_section("seed", bench_seed)
    if "cleanroom" in sections:
        rows += run_section("cleanroom", lambda: bench_clean_room(flavours))
    if "matrix" in sections:
        from systemvm.check.matrix import bench_matrix

        rows += run_section("matrix", lambda: bench_matrix(version=version, artifacts=artifacts))
    print_table(rows)
    (vdir / "reports").mkdir(parents=True, exist_ok=True)
    (vdir / "reports" / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows
