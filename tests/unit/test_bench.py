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
