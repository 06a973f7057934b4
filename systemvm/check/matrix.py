"""The hypervisor matrix: every flavour x role x configured hypervisor, VMs in parallel up to a limit.

KVM is always in the matrix; XenServer and VMware join when their connection settings exist
(:func:`systemvm.boot.hypervisors.settings.is_configured`). A flavour has cells only on the hypervisors it is
published for: arm64 (CloudStack's aarch64 template) on KVM only, booted under TCG on an x86 host.
Each cell runs ``python -m systemvm.check.suite`` in its own process
(its own harness, its own VM, always torn down), so cells cannot disturb each other and Ctrl-C reaches
every VM's teardown. The parallel limit is sized to the host: one VM more than cores under TCG (a TCG guest
keeps a core busy while it boots), two per core with hardware virtualisation, and never more than memory
allows. Cells start longest first (:func:`start_order`), so the run does not end on one long cell.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from systemvm import naming
from systemvm.boot.harness import FORMAT_OF
from systemvm.boot.hypervisors import settings
from systemvm.check.report import render_matrix_table
from systemvm.contract import ROLES
from systemvm.defaults import HYPERVISORS, Hypervisor
from systemvm.errors import UserError
from systemvm.progress import Meter, say

MATRIX_ROLES = ("secstorage", "consoleproxy", "router")
VM_MEMORY_MIB = 1024
QEMU_OVERHEAD_MIB = 384  # QEMU's own memory beside the guest's RAM
HOST_RESERVE_MIB = 2048  # left for the host, the test runner and libvirtd
REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Cell:
    hypervisor: str
    flavour: str
    role: str
    restart: bool = True  # a KVM router cell restarts its VM and checks it again (suite.RESTART_ROLES)

    @property
    def label(self) -> str:
        return f"{self.hypervisor}-{self.flavour}-{self.role}"


@dataclasses.dataclass
class CellResult:
    cell: Cell
    status: str  # PASS | FAIL | ERROR
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    boot_seconds: str = ""
    report: str = ""
    note: str = ""

    def row(self) -> dict[str, str]:
        return {
            "hypervisor": self.cell.hypervisor,
            "flavour": self.cell.flavour,
            "role": self.cell.role,
            "result": self.status,
            "checks": f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped",
            "boot (s)": self.boot_seconds,
            "wall (s)": f"{self.seconds:.0f}",
            "report": self.report or self.note,
        }


SUMMARY_COLUMNS = ("hypervisor", "flavour", "role", "result", "checks", "boot (s)", "wall (s)", "report")


def configured_hypervisors() -> list[str]:
    """KVM always; XenServer and VMware when their connection settings exist."""
    others = [str(h) for h in HYPERVISORS if h != Hypervisor.KVM and settings.is_configured(h)]
    return [str(Hypervisor.KVM), *others]


def _pick(
    choice: str | Sequence[str] | None,
    allowed: Sequence[str],
    default: Sequence[str],
    what: str,
    everything: Sequence[str] | None = None,
) -> list[str]:
    if choice is None or choice == "":
        return list(default)
    if choice == "all":
        return list(everything if everything is not None else allowed)
    values = choice.split(",") if isinstance(choice, str) else list(choice)
    values = [v.strip() for v in values if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise UserError(
            f"unknown {what} '{','.join(unknown)}': use a comma list of {', '.join(allowed)} or all"
        )
    return values


def plan_matrix(
    hypervisors: str | Sequence[str] | None = None,
    flavours: str | Sequence[str] | None = None,
    roles: str | Sequence[str] | None = None,
    restart_flavours: str | Sequence[str] | None = None,
) -> list[Cell]:
    """The cells to run, KVM first (it runs for real here), then flavour, then role. Router cells restart
    their VM for a second pass on the ``restart_flavours`` only (default: every flavour)."""
    available = configured_hypervisors()
    chosen = _pick(hypervisors, HYPERVISORS, available, "hypervisor", everything=available)
    unconfigured = [h for h in chosen if h not in available]
    if unconfigured:
        h = unconfigured[0]
        raise UserError(
            f"{h} has no connection settings: set SYSTEMVM_{h.upper()}_URL (and user, password...) "
            f"or add a [{h}] section to {settings.config_path()}"
        )
    chosen_flavours = _pick(flavours, naming.FLAVOURS, naming.FLAVOURS, "flavour")
    chosen_roles = _pick(roles, ROLES, MATRIX_ROLES, "role")
    restarting = _pick(restart_flavours, naming.FLAVOURS, naming.FLAVOURS, "flavour")
    cells = [
        Cell(h, f, r, restart=f in restarting)
        for h in chosen
        for f in chosen_flavours
        if published_for(f, h)
        for r in chosen_roles
    ]
    if not cells:
        only = ", ".join(
            f"{f} on {'/'.join(h for h in HYPERVISORS if published_for(f, h))}" for f in chosen_flavours
        )
        raise UserError(f"no cell to run: {only} only; choose another --hypervisors or --flavours")
    return cells


def published_for(flavour: str, hypervisor: str) -> bool:
    """Whether ``flavour`` is published in ``hypervisor``'s format (arm64: qcow2, so KVM only)."""
    return bool(naming.published_formats(flavour, [FORMAT_OF[hypervisor]]))


def host_resources() -> tuple[int, int]:
    """(usable cores, available memory in MiB) of this host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    available_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available_kib = int(line.split()[1])
                break
    except OSError:
        pass
    return cores, available_kib // 1024


def default_jobs(
    cores: int,
    memory_mib: int,
    hardware_virt: bool = False,
    vm_memory_mib: int = VM_MEMORY_MIB,
) -> int:
    """How many VMs to run at once: by cores and by what memory allows; at least 1.

    With KVM, two VMs per core. Under TCG a booting guest keeps a core busy, but each cell also waits on
    SSH round trips, the patch upload and the agent's first report: one VM more than cores filled those
    gaps (2 cores, KVM matrix: 449 s with 2 at once, 406 s with 3; measured).
    """
    by_cores = max(1, cores) * 2 if hardware_virt else max(1, cores) + 1
    by_memory = (memory_mib - HOST_RESERVE_MIB) // (vm_memory_mib + QEMU_OVERHEAD_MIB)
    return max(1, min(by_cores, by_memory))


def hardware_virt_available() -> bool:
    from systemvm.boot.hypervisors.accel import choose_domain_type

    return choose_domain_type().domain_type == "kvm"


def jobs_for_host(jobs: int | None = None) -> int:
    if jobs is not None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs} is not a positive number: give 1 or more")
        return jobs
    cores, memory = host_resources()
    return default_jobs(cores, memory, hardware_virt_available())


def image_lines(artifacts: Path, version: str, cells: Sequence[Cell]) -> dict[str, str]:
    """{flavour: the CloudStack line its build manifest records} for the cells' flavours ("no manifest" when
    there is none): each cell's suite checks the image as that line (systemvm/check/appliance/target.py)."""
    import json

    from systemvm.errors import UserError
    from systemvm.profile import manifest_profile

    lines: dict[str, str] = {}
    for flavour in sorted({cell.flavour for cell in cells}):
        path = naming.manifest(artifacts, version, flavour)
        try:
            lines[flavour] = manifest_profile(json.loads(path.read_text())).line
        except (OSError, ValueError, UserError):
            lines[flavour] = "no manifest"
    return lines


def reports_dir(artifacts: Path, version: str) -> Path:
    return naming.version_dir(artifacts, version) / "reports"


def result_path(artifacts: Path, version: str, cell: Cell) -> Path:
    return reports_dir(artifacts, version) / f"{cell.label}.result.json"


def cell_command(cell: Cell, version: str, artifacts: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "systemvm.check.suite",
        "--hypervisor",
        cell.hypervisor,
        "--flavour",
        cell.flavour,
        "--role",
        cell.role,
        "--version",
        version,
        "--artifacts",
        str(artifacts),
        *([] if cell.restart else ["--no-restart"]),
    ]


_RUNNING: set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()
CELL_TEARDOWN_SECONDS = 120.0  # a cell's VM destroy and lab teardown after SIGTERM, on a loaded host


def stop_cells(timeout: float = CELL_TEARDOWN_SECONDS) -> list[int]:
    """SIGTERM every running cell process (each tears down its VM and lab as on Ctrl-C), wait for them,
    SIGKILL what is still there after ``timeout``; the pids that had to be killed."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = []
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed.append(proc.pid)
    return killed


def run_cell_process(cell: Cell, version: str, artifacts: Path) -> CellResult:
    """Run one cell in its own process; read the result file it leaves (ERROR when it left none)."""
    out = reports_dir(artifacts, version)
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{cell.label}.log"
    result_file = result_path(artifacts, version, cell)
    result_file.unlink(missing_ok=True)
    start = time.monotonic()
    with open(log, "wb") as sink:
        # a session of its own: a terminal's Ctrl-C reaches the matrix, which stops the cells (stop_cells)
        proc = subprocess.Popen(
            cell_command(cell, version, artifacts), stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            proc.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
    seconds = time.monotonic() - start
    if result_file.is_file():
        data = json.loads(result_file.read_text())
        return CellResult(
            cell=cell,
            status=data["status"],
            passed=data.get("passed", 0),
            failed=data.get("failed", 0) + data.get("errors", 0),
            skipped=data.get("skipped", 0),
            seconds=seconds,
            boot_seconds=str(data.get("boot_seconds", "")),
            report=data.get("report", ""),
            note=data.get("note", ""),
        )
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return CellResult(
        cell=cell, status="ERROR", seconds=seconds, note=f"exit {proc.returncode}: {tail[0][:160]}"
    )


# Under emulation a 32-bit guest costs about 1.5 times a 64-bit one (its RSA host key alone: 30 s of CPU);
# an aarch64 guest on an x86 host (every instruction translated, UEFI firmware first) about twice (arm64
# cells took 283-396 s here, on a host running other TCG guests too).
FLAVOUR_WEIGHT = {"arm64": 2.0, "i386": 1.5, "amd64": 1.0}


def previous_seconds(cells: Iterable[Cell], version: str, artifacts: Path) -> dict[Cell, float]:
    """How long each cell took the last time it ran (its result file), for the cells that have one."""
    found: dict[Cell, float] = {}
    for cell in cells:
        try:
            seconds = float(json.loads(result_path(artifacts, version, cell).read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if seconds > 0:
            found[cell] = seconds
    return found


def start_order(cells: Sequence[Cell], previous: dict[Cell, float]) -> list[Cell]:
    """Longest first, so that the last cells to finish are short ones and the cores stay busy to the end.

    The cost of a cell is its duration in the last run when every cell has one (like CTest's cost data);
    otherwise the flavour's weight. Ties keep plan order."""
    if cells and all(c in previous for c in cells):
        cost = {c: previous[c] for c in cells}
    else:
        cost = {c: FLAVOUR_WEIGHT.get(c.flavour, 1.0) for c in cells}
    return sorted(cells, key=lambda c: -cost[c])  # sorted() is stable: equal costs keep plan order


def run_matrix(
    cells: Iterable[Cell],
    version: str,
    artifacts: Path,
    jobs: int,
    run_cell: Callable[[Cell, str, Path], CellResult] = run_cell_process,
) -> list[CellResult]:
    """Run every cell with at most ``jobs`` at once, longest first (:func:`start_order`); results in plan
    order."""
    cells = list(cells)
    order = start_order(cells, previous_seconds(cells, version, artifacts))
    results: dict[Cell, CellResult] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    meter = Meter("matrix", len(cells), "cells done")  # between the cells' lines: how many run, how long
    try:
        futures = {pool.submit(run_cell, cell, version, artifacts): cell for cell in order}
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                cell = futures[future]
                try:
                    results[cell] = future.result()
                except Exception as exc:  # noqa: BLE001 - one broken cell must not hide the others
                    results[cell] = CellResult(cell=cell, status="ERROR", note=str(exc).splitlines()[0][:160])
                r = results[cell]
                meter.close()
                say(
                    f"    [{len(results)}/{len(cells)}] {cell.label}: {r.status} ({r.seconds:.0f} s)"
                    f"{' ' + r.note if r.note else ''}"
                )
            running = sum(1 for f in pending if f.running())
            meter.update(len(results), f"{running} running")
        meter.close()
    except BaseException:  # Ctrl-C or SIGTERM: no cell starts any more, the running ones tear down
        pool.shutdown(wait=False, cancel_futures=True)
        say("    interrupted: stopping the running cells (each removes its VM and lab)")
        stop_cells()
        raise
    finally:
        pool.shutdown(wait=True)
    return [results[c] for c in cells]


def summary_table(results: Sequence[CellResult]) -> str:
    return render_matrix_table((r.row() for r in results), SUMMARY_COLUMNS)


def write_summary(
    results: Sequence[CellResult],
    path: Path,
    wall_seconds: float,
    jobs: int,
    lines: dict[str, str] | None = None,
) -> str:
    """Write the matrix summary (Markdown) and return its text; ``lines``: :func:`image_lines`."""
    from systemvm.atomic import atomic_path

    failed = [r for r in results if r.status != "PASS"]
    named = ", ".join(f"{line} ({flavour})" for flavour, line in (lines or {}).items())
    checked_as = f"Checked as CloudStack {named}, as each image's build manifest records\n\n" if named else ""
    text = (
        f"# Appliance test matrix\n\n**{'FAILED' if failed else 'PASSED'}**: {len(results) - len(failed)} of "
        f"{len(results)} cells passed in {wall_seconds:.0f} s with {jobs} at once\n\n"
        + checked_as
        + summary_table(results)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text
