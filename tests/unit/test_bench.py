"""bench.py is a leaf: it calls the phases' public functions, never the test stand-ins."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from systemvm import bench
from systemvm.defaults import Hypervisor

PACKAGE = Path(bench.__file__).resolve().parent


def test_no_package_module_imports_tests() -> None:
    importing = re.compile(r"^\s*(from tests[. ]|import tests\b)", re.M)
    offenders = [str(p) for p in PACKAGE.rglob("*.py") if importing.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("hypervisor", [Hypervisor.XENSERVER, Hypervisor.VMWARE])
def test_api_flow_section_skips_without_settings(
    hypervisor: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMVM_CONFIG", str(tmp_path / "absent.ini"))
    for key in list(os.environ):
        if key.startswith(f"SYSTEMVM_{hypervisor.upper()}_"):
            monkeypatch.delenv(key)
    rows = bench.bench_api_flow(hypervisor, tmp_path / "artifact")
    assert len(rows) == 1
    assert rows[0][1].startswith(f"skipped: no [{hypervisor}] settings")


def test_sbom_section_times_generation_and_validation(tmp_path: Path) -> None:
    from tests.unit.manifests import ORIGINS_NEW, PACKAGES_NEW, make_manifest, write_manifest

    write_manifest(tmp_path / "4.20.0", make_manifest(PACKAGES_NEW, ORIGINS_NEW))
    rows = dict(bench.bench_sbom(["amd64", "i386"], "4.20.0", tmp_path))
    assert rows["amd64: SBOM generation"].endswith(" s")
    assert rows["amd64: SBOM schema validation"].endswith(", valid")
    assert rows["amd64: SBOM size"].endswith(", 6 packages, 0 artifacts")
    assert rows["i386: SBOM"].startswith("skipped: no systemvmtemplate-4.20.0-i386.manifest.json")
