"""Run the appliance suite (systemvm/check/appliance) against one System VM booted through the harness.

Boot (``systemvm.boot.harness.boot_system_vm``), wait for the agent's startup message on agent roles, run
pytest on ``systemvm/check/appliance`` with testinfra's paramiko backend on 3922 and the harness's key,
keep the console log and ``/var/log/cloud.log`` when a check fails, tear the VM down (always), and write under
``artifacts/<version>/reports/``::

    <label>.xml           JUnit XML (pytest --junitxml)
    <label>.md            the human report (systemvm.check.report)
    <label>.params.json   what the suite was told
    <label>.result.json   status and counts, read by the matrix
    <label>.console.log   <label>.cloud.log   only when a check failed (the console also when the boot failed)

``python -m systemvm.check.suite --hypervisor kvm --flavour amd64 --role secstorage`` is what ``invoke test``
and each matrix cell run; the exit status is 0 only when every check passed.

A KVM router, storage VM or console proxy boots inside the network lab
(:func:`systemvm.lab.agentlab.lab_for`, as root): the lab first, then the VM with its public NIC (and a
router's guest NIC) on the lab's taps, the checks (``params["lab"]``), the VM destroyed, the lab torn down,
also on a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from systemvm import naming
from systemvm.atomic import atomic_path
from systemvm.check.report import RunSummary, parse_junit, write_report
from systemvm.contract import AGENT_ROLES, ROLES
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION, elements_dir
from systemvm.errors import UserError
from systemvm.interrupts import sigterm_is_interrupt
from systemvm.progress import phase, say

REPO = Path(__file__).resolve().parents[2]
# The testinfra checks ship inside the package (package data): an installed package runs them from anywhere.
SUITE_DIR = Path(__file__).resolve().parent / "appliance"
# The directory that holds the systemvm package: the checks import systemvm.check.appliance.target from it.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
PACKAGES_DIR = elements_dir() / "systemvm-packages"
AGENT_WAIT_SECONDS = 180.0
PARAMS_ENV = "SYSTEMVM_APPLIANCE_PARAMS"


@dataclasses.dataclass
class SuiteOutcome:
    label: str
    status: str  # PASS | FAIL | ERROR
    summary: RunSummary | None
    report: Path | None
    junit: Path | None
    note: str = ""


def check_node(module: str) -> str:
    """The node-id prefix of one module of the shipped checks: ``check_node("test_ssh_access.py") + name``."""
    return f"{SUITE_DIR / module}::"


def cell_label(hypervisor: str, flavour: str, role: str) -> str:
    return f"{hypervisor}-{flavour}-{role}"


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# Checks of a VM the suite restarted (the second pass of a router cell): never part of the first pass.
RESTART_MODULE = "test_after_restart.py"
# The cells whose VM the suite restarts after its checks, as CloudStack restarts routers.
RESTART_ROLES = ("router",)


def run_checks(params: dict[str, Any], out_dir: Path, label: str, select: list[str] | None = None) -> Path:
    """Run pytest on the appliance suite with ``params``; return the JUnit XML path (pytest's exit is
    read from the XML). Works for any target testinfra reaches: a VM, a chroot, the local host.
    ``select``: node ids (``check_node("test_haproxy.py") + "test_haproxy_is_installed"``) or module paths
    to run instead of the whole suite (which leaves out the restart module)."""
    out_dir = Path(out_dir).resolve()  # pytest runs in the suite's directory: every path it gets is absolute
    params_file = out_dir / f"{label}.params.json"
    _write_json(params_file, params)
    junit = out_dir / f"{label}.xml"
    junit.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(select or [str(SUITE_DIR), f"--ignore={SUITE_DIR / RESTART_MODULE}"]),
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",  # keeps record_property (the check names) without warnings
        "-o",
        "addopts=",
        "-q",
        "-rfE",
        f"--rootdir={SUITE_DIR}",
        f"--junitxml={junit}",
    ]
    python_path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, PARAMS_ENV: str(params_file), "PYTHONPATH": python_path}
    proc = subprocess.run(command, cwd=SUITE_DIR, env=env, text=True, capture_output=True)
    (out_dir / f"{label}.pytest.log").write_text(proc.stdout + proc.stderr)
    if not junit.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise UserError(
            f"the appliance suite did not run (pytest exit {proc.returncode}): {' / '.join(tail)}"
        )
    return junit


def wants_lab(hypervisor: str, role: str) -> bool:
    """Whether this cell boots inside the network lab: KVM routers, storage VMs and console proxies."""
    from systemvm.boot.testnet import LAB_ROLES

    return hypervisor == "kvm" and role in LAB_ROLES


LAB_SERVICES = {
    "router": "web backends, public site, IPsec peer",
    "secstorage": "NFS export and template download on the public server",
    "consoleproxy": "the public server to probe from",
}


@contextlib.contextmanager
def _lab_for(hypervisor: str, role: str) -> Iterator[Any]:
    """The lab for a KVM router, storage VM or console proxy (None for other cells, or without root: their
    lab checks, which apply to such a cell, then fail: systemvm/check/appliance/applies.py)."""
    if not wants_lab(hypervisor, role):
        yield None
        return
    if os.geteuid() != 0:
        say(f"    not root: the {role} boots without the network lab (its lab checks fail: run as root)")
        yield None
        return
    from systemvm.lab.agentlab import lab_for

    with phase(f"build the network lab ({LAB_SERVICES[role]})"):
        stack = contextlib.ExitStack()
        lab = stack.enter_context(lab_for(role))
    with stack:
        yield lab


def _fetch_cloud_log(vm: Any) -> str:
    from systemvm.boot import sshwait

    text = sshwait.try_ssh(
        vm.target.host, vm.target.port, vm.key_file, command="cat /var/log/cloud.log 2>&1 || true"
    )
    return text if text is not None else "(SSH did not answer: no cloud.log)"


def run_appliance_test(
    hypervisor: str,
    flavour: str,
    role: str,
    version: str = DEFAULT_VERSION,
    artifacts: Path = ARTIFACTS_DIR,
    artifact: Path | None = None,
    restart: bool = True,
) -> SuiteOutcome:
    """Boot, check, collect, tear down, report. Never raises for failed checks; raises UserError for
    bad input (unknown role, missing artifact). ``restart``: a KVM router is restarted and checked again."""
    from systemvm.boot.harness import VmRequest, boot_system_vm

    if role not in ROLES:
        raise UserError(f"unknown role '{role}': use one of {', '.join(ROLES)}")
    label = cell_label(hypervisor, flavour, role)
    artifacts = Path(artifacts).resolve()
    version_dir = naming.version_dir(Path(artifacts), version)
    if not version_dir.is_dir():
        raise UserError(f"no artifacts for version {version} in {artifacts}: build it first (invoke build)")
    out_dir = version_dir / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = naming.manifest(Path(artifacts), version, flavour)
    context = {"Hypervisor": hypervisor, "Flavour": flavour, "Role": role, "Version": version}
    started = time.monotonic()
    junit: Path | None = None
    boot_numbers: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            lab = stack.enter_context(_lab_for(hypervisor, role))
            vm = stack.enter_context(
                boot_system_vm(
                    VmRequest(
                        hypervisor,
                        flavour,
                        role,
                        version=version,
                        artifacts=artifacts,
                        artifact=artifact,
                        lab=lab,
                        console_to=out_dir / f"{label}.console.log",
                    )
                )
            )
            boot_numbers = {k: f"{v:.1f}" for k, v in vm.timings.items()}
            if role in AGENT_ROLES:
                with phase(f"wait for {vm.name}'s agent on the management listener"):
                    try:
                        vm.listener.wait_for_startup(vm.name, timeout=AGENT_WAIT_SECONDS)
                    except TimeoutError as exc:  # the agent check reports it
                        say(f"    {exc}")
            params = {
                **vm.suite_params(),
                "version": version,
                "manifest": str(manifest),
                "packages_dir": str(PACKAGES_DIR),
            }
            with phase(f"appliance checks on {label}"):
                junit = run_checks(params, out_dir, label)
            if restart and hypervisor == "kvm" and role in RESTART_ROLES:
                junit = restart_and_check(vm, params, out_dir, label, junit)
                boot_numbers = {k: f"{v:.1f}" for k, v in vm.timings.items()}
            summary = parse_junit(junit)
            if summary.failed:
                (out_dir / f"{label}.console.log").write_text(vm.console_log())
                (out_dir / f"{label}.cloud.log").write_text(_fetch_cloud_log(vm))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a VM that does not boot is a result, reported as ERROR
        note = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        _write_json(
            out_dir / f"{label}.result.json",
            {"status": "ERROR", "note": note, "seconds": round(time.monotonic() - started, 1)},
        )
        return SuiteOutcome(label, "ERROR", None, None, None, note)
    for key, value in boot_numbers.items():
        context[f"Harness: {key} (s)"] = value
    report = out_dir / f"{label}.md"
    summary = write_report(junit, report, f"Appliance checks: {flavour} {role} on {hypervisor}", context)
    status = "FAIL" if summary.failed or not summary.checks else "PASS"
    _write_json(
        out_dir / f"{label}.result.json",
        {
            "status": status,
            "passed": summary.count("passed"),
            "failed": summary.count("failed"),
            "errors": summary.count("error"),
            "skipped": summary.count("skipped"),
            "boot_seconds": summary.numbers.get("boot_seconds", ""),
            "uptime_seconds": summary.numbers.get("uptime_seconds", ""),
            "harness_seconds": boot_numbers,
            "seconds": round(time.monotonic() - started, 1),
            "report": str(report),
        },
    )
    return SuiteOutcome(label, status, summary, report, junit)


def restart_and_check(vm: Any, params: dict[str, Any], out_dir: Path, label: str, junit: Path) -> Path:
    """The restart cell: restart the VM as CloudStack restarts a router, run the restart module, add its
    results to the cell's JUnit file. A restart that fails is the module's one failed check."""
    from systemvm.boot.harness import restart_system_vm

    restart_label = f"{label}.restart"
    try:
        restart_system_vm(vm)
    except Exception as exc:  # noqa: BLE001 - reported as the restart's failure, the cell goes on
        message = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        extra = out_dir / f"{restart_label}.xml"
        with atomic_path(extra) as tmp:
            tmp.write_bytes(one_case_junit("after restart", "test_restart", "The VM restarts with its "
                                           "command line delivered again", 0.0, message))  # fmt: skip
    else:
        with phase(f"checks after the restart of {label}"):
            extra = run_checks({**params, **vm.suite_params()}, out_dir, restart_label,
                               select=[str(SUITE_DIR / RESTART_MODULE)])  # fmt: skip
    merge_junit(junit, extra)
    return junit


def merge_junit(target: Path, extra: Path) -> None:
    """Append the test suites of ``extra`` to ``target`` (both pytest JUnit files)."""
    from lxml import etree

    root = etree.parse(str(target)).getroot()
    if root.tag != "testsuites":
        wrapper = etree.Element("testsuites")
        wrapper.append(root)
        root = wrapper
    other = etree.parse(str(extra)).getroot()
    for suite in [other] if other.tag == "testsuite" else list(other):
        root.append(suite)
    with atomic_path(target) as tmp:
        tmp.write_bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def api_only(hypervisor: str) -> bool:
    """True when the hypervisor's settings say its endpoint runs no guests (``api_only = true``: the XAPI
    stand-in, vcsim): the matrix then runs the driver's API flow instead of the appliance checks."""
    from systemvm.boot.hypervisors import settings

    if hypervisor == "kvm":
        return False
    return settings.load_settings(hypervisor).get("api_only", "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


def run_api_flow(
    hypervisor: str,
    flavour: str,
    role: str,
    version: str = DEFAULT_VERSION,
    artifacts: Path = ARTIFACTS_DIR,
    artifact: Path | None = None,
) -> SuiteOutcome:
    """Import the artifact, create the VM with the role's NICs and command line, start it, destroy it:
    the driver's whole API flow against an endpoint that boots no guest. One row in the report."""
    import tempfile

    from systemvm.boot import harness, sshwait
    from systemvm.boot.hypervisors.base import BootRequest, new_run_prefix
    from systemvm.boot.hypervisors.registry import get_driver

    label = cell_label(hypervisor, flavour, role)
    artifacts = Path(artifacts).resolve()
    version_dir = naming.version_dir(Path(artifacts), version)
    out_dir = version_dir / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = artifact or harness.artifact_path(Path(artifacts), version, flavour, hypervisor)
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist: build and export it first (invoke build)")
    started = time.monotonic()
    status, message = "PASS", ""
    with tempfile.TemporaryDirectory(prefix="svmt-api-") as tmp:
        _, public_key = sshwait.make_keypair(Path(tmp))
        name = harness.vm_name(role)
        plan = harness.plan_boot(hypervisor, role, name, public_key, 8250)
        request = BootRequest(
            artifact=path,
            flavour=flavour,
            boot_args=plan.boot_args,
            run_prefix=new_run_prefix(),
            work_dir=Path(tmp),
        )
        driver = get_driver(hypervisor)
        try:
            with phase(f"{hypervisor} API flow for {flavour} {role} (import, create, start, destroy)"):
                driver.import_and_start(request)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the flow's failure is the result
            status, message = "FAIL", (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        finally:
            driver.destroy()
    seconds = time.monotonic() - started
    junit = out_dir / f"{label}.xml"
    with atomic_path(junit) as tmp_xml:
        tmp_xml.write_bytes(api_flow_junit(hypervisor, seconds, message if status == "FAIL" else None))
    report = out_dir / f"{label}.md"
    title = f"API flow: {flavour} {role} on {hypervisor}"
    context = {"Hypervisor": hypervisor, "Flavour": flavour, "Role": role, "Version": version}
    summary = write_report(junit, report, title, context)
    _write_json(
        out_dir / f"{label}.result.json",
        {
            "status": status,
            "passed": summary.count("passed"),
            "failed": summary.count("failed"),
            "seconds": round(seconds, 1),
            "report": str(report),
            "note": "API flow only (no guest)" if status == "PASS" else message,
        },
    )
    return SuiteOutcome(label, status, summary, report, junit, message)


def api_flow_junit(hypervisor: str, seconds: float, failure: str | None) -> bytes:
    """A one-case JUnit XML document for an API-flow run, named like the suite's checks."""
    check = "Import, create with the role's NICs and command line, start, destroy (no guest boots)"
    return one_case_junit(f"{hypervisor} API flow", "test_api_flow", check, seconds, failure, hypervisor)


def one_case_junit(
    section: str, name: str, check: str, seconds: float, failure: str | None, classname: str = ""
) -> bytes:
    """A one-case JUnit XML document named like the suite's checks (``failure``: its message)."""
    from lxml import etree

    suites = etree.Element("testsuites")
    suite = etree.SubElement(suites, "testsuite", name=name, tests="1", failures=str(int(bool(failure))))
    case = etree.SubElement(
        suite, "testcase", classname=classname or section, name=name, time=f"{seconds:.3f}"
    )
    props = etree.SubElement(case, "properties")
    etree.SubElement(props, "property", name="section", value=section)
    etree.SubElement(props, "property", name="check", value=check)
    if failure is not None:
        etree.SubElement(case, "failure", message=failure)
    return etree.tostring(suites, xml_declaration=True, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m systemvm.check.suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--hypervisor", default="kvm")
    parser.add_argument("--flavour", default="amd64", choices=naming.FLAVOURS)
    parser.add_argument("--role", default="secstorage", choices=ROLES)
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--artifacts", default=str(ARTIFACTS_DIR))
    parser.add_argument("--artifact", default=None, help="boot this file instead of the exported artifact")
    parser.add_argument(
        "--no-restart", dest="restart", action="store_false", help="a router cell without its restart pass"
    )
    args = parser.parse_args(argv)
    sigterm_is_interrupt()  # the matrix stops a cell with SIGTERM: its VM and lab go as on Ctrl-C
    try:
        cell = (args.hypervisor, args.flavour, args.role, args.version, Path(args.artifacts))
        artifact = Path(args.artifact) if args.artifact else None
        if api_only(args.hypervisor):
            outcome = run_api_flow(*cell, artifact)
        else:
            outcome = run_appliance_test(*cell, artifact, restart=args.restart)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; everything this run created was removed", file=sys.stderr)
        return 130
    if outcome.summary is not None:
        s = outcome.summary
        say(
            f"{outcome.label}: {outcome.status}: {s.count('passed')} passed, {s.count('failed')} failed, "
            f"{s.count('error')} errors, {s.count('skipped')} skipped; report {outcome.report}"
        )
        for check in s.checks:
            if check.result in ("failed", "error"):
                say(f"    FAIL {check.section}: {check.check}: {check.message}")
    else:
        say(f"{outcome.label}: {outcome.status}: {outcome.note}")
    return 0 if outcome.status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
