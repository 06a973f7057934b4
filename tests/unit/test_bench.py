"""The bench is a leaf: it calls the phases' public functions, never the test stand-ins; no phase holds a
bench function."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import systemvm
from systemvm import bench
from systemvm.bench.boot import bench_api_flow
from systemvm.bench.export import bench_sbom
from systemvm.defaults import Hypervisor

PACKAGE = Path(bench.__file__).resolve().parent


def test_no_package_module_imports_tests() -> None:
    importing = re.compile(r"^\s*(from tests[. ]|import tests\b)", re.M)
    offenders = [str(p) for p in PACKAGE.rglob("*.py") if importing.search(p.read_text())]
    assert offenders == []


def test_no_phase_module_holds_a_bench_function() -> None:
    """Every ``bench_*`` function lives in the bench package: the phases stay free of measuring code."""
    root = Path(systemvm.__file__).resolve().parent
    defining = re.compile(r"^\s*def bench_", re.M)
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if PACKAGE not in p.parents and defining.search(p.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize("hypervisor", [Hypervisor.XENSERVER, Hypervisor.VMWARE])
def test_api_flow_section_skips_without_settings(
    hypervisor: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMVM_CONFIG", str(tmp_path / "absent.ini"))
    for key in list(os.environ):
        if key.startswith(f"SYSTEMVM_{hypervisor.upper()}_"):
            monkeypatch.delenv(key)
    rows = bench_api_flow(hypervisor, tmp_path / "artifact")
    assert len(rows) == 1
    assert rows[0][1].startswith(f"skipped: no [{hypervisor}] settings")


def test_sbom_section_times_generation_and_validation(tmp_path: Path) -> None:
    from tests.unit.manifests import ORIGINS_NEW, PACKAGES_NEW, make_manifest, write_manifest

    write_manifest(tmp_path / "4.20.0", make_manifest(PACKAGES_NEW, ORIGINS_NEW))
    rows = dict(bench_sbom(["amd64", "i386"], "4.20.0", tmp_path))
    assert rows["amd64: SBOM generation"].endswith(" s")
    assert rows["amd64: SBOM schema validation"].endswith(", valid")
    assert rows["amd64: SBOM size"].endswith(", 6 packages, 0 artifacts")
    assert rows["i386: SBOM"].startswith("skipped: no systemvmtemplate-4.20.0-i386.manifest.json")


def test_sizes_section_compares_with_amd64_and_with_cloudstacks_published_files(tmp_path: Path) -> None:
    from systemvm import naming
    from systemvm.bench.sizes import bench_sizes
    from tests.unit.manifests import PACKAGES_NEW, make_manifest, write_manifest

    vdir = tmp_path / "4.20.0"
    for flavour, used, kvm in (("amd64", 1000 << 20, 400 << 20), ("arm64", 1100 << 20, 300 << 20)):
        manifest = make_manifest(PACKAGES_NEW, flavour=flavour)
        manifest["sizes"] = {"rootfs_used_bytes": used, "raw_disk_allocated_bytes": used - (100 << 20)}
        write_manifest(vdir, manifest)
        (vdir / naming.export_name("4.20.0", flavour, "qcow2")).write_bytes(b"\0" * (kvm >> 10))
    rows = dict(bench_sizes(["amd64", "i386", "arm64"], "4.20.0", tmp_path))
    assert rows["arm64: root filesystem used"] == "1.1 GiB, 1.10 x amd64"
    assert rows["arm64: kvm.qcow2.bz2"] == "300.0 KiB, 0.75 x amd64"
    assert rows["amd64: kvm.qcow2.bz2 vs CloudStack's x86_64"].startswith("400.0 KiB vs 509.0 MiB (4.20.0, ")
    assert rows["arm64: kvm.qcow2.bz2 vs CloudStack's aarch64"].startswith("unknown (not published")
    assert rows["i386: sizes"].startswith("skipped: no ")
