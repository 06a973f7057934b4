"""Matrix cells on an endpoint that boots no guest (``api_only = true``: the XAPI stand-in in CI) run the
driver's API flow and pass or fail with it: a real ``python -m systemvm.check.suite`` process against the
project's XAPI stand-in, with a small real VHD named as the export."""

from __future__ import annotations

import bz2
import os
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.check.matrix import Cell, plan_matrix, run_cell_process
from systemvm.check.report import parse_junit
from systemvm.export.formats.vhd import write_dynamic_vhd
from tests.standins.xapi import DEFAULT_NETWORK, DEFAULT_SR, XapiStandin

pytestmark = pytest.mark.e2e
VERSION = "0.0.1"
MIB = 2**20


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    version_dir = naming.version_dir(root, VERSION)
    version_dir.mkdir(parents=True)
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(8 * MIB)
        handle.seek(MIB)
        handle.write(os.urandom(2 * MIB))
    vhd = tmp_path / "disk.vhd"
    write_dynamic_vhd(raw, vhd)
    (version_dir / naming.export_name(VERSION, "amd64", "vhd")).write_bytes(bz2.compress(vhd.read_bytes()))
    return root


@pytest.fixture()
def xapi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with XapiStandin() as standin:
        monkeypatch.setenv("SYSTEMVM_CONFIG", str(tmp_path / "absent.ini"))
        for key, value in {
            "URL": standin.url,
            "USER": standin.user,
            "PASSWORD": standin.password,
            "SR": DEFAULT_SR,
            "NETWORK": DEFAULT_NETWORK,
            "API_ONLY": "true",
        }.items():
            monkeypatch.setenv(f"SYSTEMVM_XENSERVER_{key}", value)
        yield standin


def test_api_flow_cell_passes_and_leaves_nothing(xapi: XapiStandin, artifacts: Path) -> None:
    assert Cell("xenserver", "amd64", "router") in plan_matrix()
    result = run_cell_process(Cell("xenserver", "amd64", "router"), VERSION, artifacts)
    log = (artifacts / VERSION / "reports" / "xenserver-amd64-router.log").read_text()
    assert result.status == "PASS", log[-2000:]
    assert result.note == "API flow only (no guest)"
    junit = parse_junit(artifacts / VERSION / "reports" / "xenserver-amd64-router.xml")
    assert [(c.section, c.result) for c in junit.checks] == [("xenserver API flow", "passed")]
    assert "VM.start" in xapi.calls and "VM.destroy" in xapi.calls
    left = [
        r
        for r in xapi.records("VM").values()
        if not r.get("is_a_template") and not r.get("is_control_domain")
    ]
    assert not left, [r.get("name_label") for r in left]


def test_api_flow_cell_fails_with_the_reason(
    xapi: XapiStandin, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMVM_XENSERVER_SR", "No such SR")
    result = run_cell_process(Cell("xenserver", "amd64", "router"), VERSION, artifacts)
    assert result.status in ("FAIL", "ERROR")
    text = (artifacts / VERSION / "reports" / "xenserver-amd64-router.log").read_text()
    assert "No such SR" in text
