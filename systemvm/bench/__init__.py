"""``invoke bench``: timings and sizes to compare between commits. It prints; it never asserts.

A leaf: each section (a module here) calls the phases' public functions; no phase imports the bench."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from systemvm import naming
from systemvm.bench.table import Rows, print_table, run_section
from systemvm.defaults import Flavour, Hypervisor


def bench(flavours: list[str], version: str, artifacts: Path, sections: list[str], cold: bool) -> Rows:
    rows: Rows = []
    vdir = naming.version_dir(artifacts, version)
    if "build" in sections:
        from systemvm.bench.build import bench_build

        rows += run_section("build", lambda: bench_build(flavours, version, artifacts, cold))
    if "boot" in sections:
        from systemvm.bench.boot import bench_qemu_ssh

        rows += run_section("boot", lambda: bench_qemu_ssh(flavours, version, artifacts))
    if "export" in sections:
        from systemvm.bench.export import bench_export

        for flavour in flavours:
            with tempfile.TemporaryDirectory(prefix="svmt-bench-", dir=vdir) as tmp:
                raw = naming.raw_disk(artifacts, version, flavour)
                formats = naming.published_formats(flavour)
                run = functools.partial(bench_export, raw, Path(tmp), formats)
                rows += [(f"{flavour}: {k}", v) for k, v in run_section("export", run)]
    if "sizes" in sections:
        from systemvm.bench.sizes import bench_sizes

        rows += run_section("sizes", lambda: bench_sizes(flavours, version, artifacts))
    if "sbom" in sections:
        from systemvm.bench.export import bench_sbom

        rows += run_section("sbom", lambda: bench_sbom(flavours, version, artifacts))
    if "kvm" in sections:
        from systemvm.bench.boot import bench_kvm

        qcow2 = [vdir / naming.export_name(version, f, "qcow2") for f in flavours]
        rows += run_section("kvm", lambda: bench_kvm([p for p in qcow2 if p.exists()]))
    if "router" in sections:
        from systemvm.bench.router import bench_router

        for flavour in flavours:
            disk = vdir / naming.export_name(version, flavour, "qcow2")
            rows += run_section("router", functools.partial(bench_router, flavour, disk))
    for hypervisor, fmt in ((Hypervisor.XENSERVER, "vhd"), (Hypervisor.VMWARE, "ova")):
        if hypervisor in sections:
            from systemvm.bench.boot import bench_api_flow

            artifact = vdir / naming.export_name(version, Flavour.AMD64, fmt)
            rows += run_section(hypervisor, functools.partial(bench_api_flow, hypervisor, artifact))
    if "seed" in sections:
        from systemvm.bench.seed import bench_seed

        rows += run_section("seed", bench_seed)
    if "cleanroom" in sections:
        from systemvm.bench.cleanroom import bench_clean_room

        rows += run_section("cleanroom", lambda: bench_clean_room(flavours))
    if "matrix" in sections:
        from systemvm.bench.matrix import bench_matrix

        rows += run_section("matrix", lambda: bench_matrix(version=version, artifacts=artifacts))
    print_table(rows)
    (vdir / "reports").mkdir(parents=True, exist_ok=True)
    (vdir / "reports" / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows
