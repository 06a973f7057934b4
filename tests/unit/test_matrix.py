"""Matrix planning, job sizing and the parallel runner (cells are plain functions here, no VMs)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from systemvm import contract
from systemvm.check.matrix import (
    Cell,
    CellResult,
    cell_command,
    default_jobs,
    jobs_for_host,
    plan_matrix,
    previous_seconds,
    run_matrix,
    start_order,
    summary_table,
    write_summary,
)
from systemvm.errors import UserError


@pytest.fixture(autouse=True)
def _no_hypervisor_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYSTEMVM_CONFIG", str(tmp_path / "absent.ini"))
    for h in ("XENSERVER", "VMWARE"):
        monkeypatch.delenv(f"SYSTEMVM_{h}_URL", raising=False)


def test_kvm_only_when_nothing_else_is_configured() -> None:
    cells = plan_matrix()
    assert {c.hypervisor for c in cells} == {"kvm"}
    assert len(cells) == 9  # 3 flavours x 3 roles
    assert cells[0] == Cell("kvm", "amd64", "secstorage")
    assert {(c.flavour, c.role) for c in cells} == {
        (f, r) for f in ("amd64", "i386", "arm64") for r in ("secstorage", "consoleproxy", "router")
    }


def test_configured_hypervisors_join(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYSTEMVM_VMWARE_URL", "https://127.0.0.1:8989/sdk")
    assert [c.hypervisor for c in plan_matrix()].count("vmware") == 6
    assert "xenserver" not in {c.hypervisor for c in plan_matrix()}
    config = tmp_path / "h.ini"
    config.write_text("[xenserver]\nurl = http://127.0.0.1:8080\nuser = root\n")
    monkeypatch.setenv("SYSTEMVM_CONFIG", str(config))
    hypervisors = [c.hypervisor for c in plan_matrix()]
    assert hypervisors[:9] == ["kvm"] * 9  # KVM first
    assert set(hypervisors) == {"kvm", "xenserver", "vmware"} and len(hypervisors) == 21


def test_arm64_cells_are_kvm_only() -> None:
    """CloudStack publishes aarch64 as a KVM qcow2 only: no XenServer or VMware cell for it."""
    assert plan_matrix("kvm", "arm64", "router") == [Cell("kvm", "arm64", "router")]
    assert {c.hypervisor for c in plan_matrix(flavours="arm64")} == {"kvm"}


def test_only_the_restart_flavours_router_cells_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI restarts the amd64 router only: the other cells' suite runs get --no-restart, which the suite
    reads as its ``restart`` argument."""
    from systemvm.check import suite

    cells = plan_matrix("kvm", "amd64,i386", "router", restart_flavours="amd64")
    assert [(c.flavour, c.restart) for c in cells] == [("amd64", True), ("i386", False)]
    commands = {c.flavour: cell_command(c, "4.22.0", Path("/a")) for c in cells}
    assert "--no-restart" not in commands["amd64"] and commands["i386"][-1] == "--no-restart"
    assert all(c.restart for c in plan_matrix("kvm", "amd64,i386", "router"))  # default: every router
    with pytest.raises(UserError, match="flavour"):
        plan_matrix("kvm", "amd64", "router", restart_flavours="sparc")
    seen: dict[str, bool] = {}

    def fake_test(*args: object, restart: bool = True) -> None:
        seen["restart"] = restart
        raise UserError("stop here")

    monkeypatch.setattr(suite, "run_appliance_test", fake_test)
    suite.main(commands["i386"][3:])
    assert seen == {"restart": False}
    suite.main(commands["amd64"][3:])
    assert seen == {"restart": True}


def test_arm64_on_another_hypervisor_alone_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEMVM_VMWARE_URL", "https://127.0.0.1:8989/sdk")
    assert {c.flavour for c in plan_matrix("vmware")} == {"amd64", "i386"}
    with pytest.raises(UserError, match="no cell to run: arm64 on kvm only"):
        plan_matrix("vmware", "arm64")


def test_choices_narrow_the_plan_and_bad_ones_fail() -> None:
    assert plan_matrix("kvm", "i386", "router") == [Cell("kvm", "i386", "router")]
    assert len(plan_matrix(roles="all")) == 3 * len(contract.ROLES)  # every role of the contract
    with pytest.raises(UserError, match="no connection settings"):
        plan_matrix("xenserver")
    with pytest.raises(UserError, match="unknown role 'proxy'"):
        plan_matrix(roles="router,proxy")
    with pytest.raises(UserError, match="unknown flavour"):
        plan_matrix(flavours="armhf")


@pytest.mark.parametrize(
    ("cores", "memory", "hw", "expected"),
    [
        (2, 24 * 1024, False, 3),  # this host: TCG, one VM per core and one more
        (2, 24 * 1024, True, 4),  # with KVM, two per core
        (64, 24 * 1024, True, 16),  # memory bounds it: (24576 - 2048) // 1408
        (8, 3 * 1024, False, 1),  # little memory: still one
        (1, 24 * 1024, False, 2),
        (0, 0, False, 1),
    ],
)
def test_default_jobs(cores: int, memory: int, hw: bool, expected: int) -> None:
    assert default_jobs(cores, memory, hw) == expected


def test_explicit_jobs_must_be_positive() -> None:
    assert jobs_for_host(3) == 3
    with pytest.raises(UserError, match="positive"):
        jobs_for_host(0)
    assert jobs_for_host() >= 1


def test_runner_respects_the_limit_and_keeps_plan_order(tmp_path: Path) -> None:
    lock = threading.Lock()
    running = {"now": 0, "peak": 0}

    def cell_runner(cell: Cell, version: str, artifacts: Path) -> CellResult:
        with lock:
            running["now"] += 1
            running["peak"] = max(running["peak"], running["now"])
        time.sleep(0.05)
        with lock:
            running["now"] -= 1
        if cell.role == "router":
            raise RuntimeError("router VM did not boot\nmore lines")
        return CellResult(cell=cell, status="FAIL" if cell.flavour == "i386" else "PASS", passed=3)

    cells = plan_matrix()
    results = run_matrix(cells, "4.20.0", tmp_path, jobs=2, run_cell=cell_runner)
    assert running["peak"] == 2
    assert [r.cell for r in results] == cells
    statuses = {r.cell.label: r.status for r in results}
    assert statuses["kvm-amd64-secstorage"] == "PASS"
    assert statuses["kvm-i386-consoleproxy"] == "FAIL"
    router = next(r for r in results if r.cell.role == "router")
    assert router.status == "ERROR" and router.note == "router VM did not boot"

    text = write_summary(results, tmp_path / "matrix.md", 12.0, 2)
    assert "**FAILED**: 4 of 9 cells passed in 12 s with 2 at once" in text
    assert (tmp_path / "matrix.md").read_text() == text
    table = summary_table(results).splitlines()
    assert table[0].startswith("| hypervisor | flavour | role | result |")
    assert len(table) == 11


def test_a_cell_that_cannot_boot_is_an_error_with_its_reason(tmp_path: Path) -> None:
    """A real cell process (python -m systemvm.check.suite) on a version with no export."""
    from systemvm.check.matrix import run_cell_process

    (tmp_path / "9.9.9").mkdir()
    result = run_cell_process(Cell("kvm", "amd64", "router"), "9.9.9", tmp_path)
    assert result.status == "ERROR"
    assert "systemvmtemplate-9.9.9-x86_64-kvm.qcow2.bz2 does not exist" in result.note
    assert (tmp_path / "9.9.9" / "reports" / "kvm-amd64-router.log").is_file()


def test_cells_start_longest_first_by_flavour_without_history() -> None:
    cells = plan_matrix("kvm")
    order = start_order(cells, {})
    assert [c.flavour for c in order] == ["arm64"] * 3 + ["i386"] * 3 + ["amd64"] * 3
    assert [c.role for c in order[:3]] == ["secstorage", "consoleproxy", "router"]  # ties keep plan order


def test_cells_start_longest_first_by_their_last_run(tmp_path: Path) -> None:
    cells = plan_matrix("kvm")
    reports = tmp_path / "4.20.0" / "reports"
    reports.mkdir(parents=True)
    seconds = {c: 100.0 + i for i, c in enumerate(cells)}
    seconds[Cell("kvm", "amd64", "router")] = 500.0
    for cell, value in seconds.items():
        (reports / f"{cell.label}.result.json").write_text(json.dumps({"status": "PASS", "seconds": value}))
    (reports / "kvm-i386-router.result.json").write_text("{not json")  # unreadable: ignored
    previous = previous_seconds(cells, "4.20.0", tmp_path)
    assert Cell("kvm", "i386", "router") not in previous and len(previous) == 8
    # one cell without history: the flavour weights decide
    assert start_order(cells, previous)[0].flavour == "arm64"
    (reports / "kvm-i386-router.result.json").write_text(json.dumps({"status": "PASS", "seconds": 50}))
    order = start_order(cells, previous_seconds(cells, "4.20.0", tmp_path))
    assert order[0] == Cell("kvm", "amd64", "router")
    assert order[-1] == Cell("kvm", "i386", "router")

    started: list[Cell] = []

    def cell_runner(cell: Cell, version: str, artifacts: Path) -> CellResult:
        started.append(cell)
        return CellResult(cell=cell, status="PASS")

    results = run_matrix(cells, "4.20.0", tmp_path, jobs=1, run_cell=cell_runner)
    assert started == order
    assert [r.cell for r in results] == cells


def test_the_matrix_reads_each_images_line_from_its_manifest(tmp_path: Path) -> None:
    """A 4.22 image is checked as 4.22 whatever version string the matrix was given; the summary says so."""
    from systemvm.check.matrix import image_lines
    from tests.unit.manifests import PACKAGES_NEW, make_manifest, write_manifest

    write_manifest(tmp_path / "4.22.0", make_manifest(PACKAGES_NEW, version="4.22.0", recorded_profile=True))
    cells = plan_matrix(None, "amd64,i386", "secstorage")
    lines = image_lines(tmp_path, "4.22.0", cells)
    assert lines == {"amd64": "4.22", "i386": "no manifest"}
    text = write_summary([], tmp_path / "matrix.md", 1.0, 1, lines)
    assert "Checked as CloudStack 4.22 (amd64), no manifest (i386)" in text
