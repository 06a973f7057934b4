"""``invoke test`` (one VM through the appliance suite) and ``invoke matrix`` (every cell)."""

from __future__ import annotations

import time
from pathlib import Path

from invoke import Context, task

from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION
from systemvm.tasks import user_errors, whole_number


@task(
    help={
        "hypervisor": "kvm, xenserver or vmware",
        "flavour": "amd64, i386 or arm64",
        "role": "secstorage, consoleproxy, router, vpcrouter, dhcpsrvr, ilbvm or elbvm (default secstorage)",
        "version": f"template version X.Y.Z (default {DEFAULT_VERSION})",
        "artifacts": "artifacts directory holding <version>/ (default ./artifacts)",
        "artifact": "boot this file instead of the exported artifact",
    }
)
def test(
    c: Context,
    hypervisor: str = "kvm",
    flavour: str = "amd64",
    role: str = "secstorage",
    version: str = DEFAULT_VERSION,
    artifacts: str | None = None,
    artifact: str | None = None,
) -> None:
    """Boot one System VM, run the appliance checks over SSH on 3922, report, tear down."""
    from systemvm.check.suite import main

    with user_errors():
        argv = ["--hypervisor", hypervisor, "--flavour", flavour, "--role", role, "--version", version]
        argv += ["--artifacts", str(Path(artifacts) if artifacts else ARTIFACTS_DIR)]
        if artifact:
            argv += ["--artifact", artifact]
        status = main(argv)
        if status:
            raise SystemExit(status)


@task(
    help={
        "jobs": "VMs at once (default: sized to this host's cores and memory)",
        "hypervisors": "comma list, or all configured (default: kvm + those with connection settings)",
        "flavours": "comma list of amd64,i386,arm64 (default all; arm64 on KVM only)",
        "roles": "comma list, or all (default secstorage,consoleproxy,router)",
        "version": f"template version X.Y.Z (default {DEFAULT_VERSION})",
        "artifacts": "artifacts directory holding <version>/ (default ./artifacts)",
        "restart_flavours": "comma list: the flavours whose KVM router cells restart and check again "
        "(default all)",
    }
)
def matrix(
    c: Context,
    jobs: str | None = None,
    hypervisors: str | None = None,
    flavours: str | None = None,
    roles: str | None = None,
    version: str = DEFAULT_VERSION,
    artifacts: str | None = None,
    restart_flavours: str | None = None,
) -> None:
    """Run the appliance suite for every flavour x role x configured hypervisor; print one summary table."""
    from systemvm.check import matrix as m
    from systemvm.interrupts import sigterm_is_interrupt
    from systemvm.progress import say

    sigterm_is_interrupt()  # a killed matrix stops its cells, which remove their VMs and labs
    with user_errors():
        root = Path(artifacts) if artifacts else ARTIFACTS_DIR
        cells = m.plan_matrix(hypervisors, flavours, roles, restart_flavours)
        limit = m.jobs_for_host(whole_number(jobs, "--jobs") if jobs is not None else None)
        lines = m.image_lines(root, version, cells)
        checked_as = ", ".join(f"{flavour} as CloudStack {line}" for flavour, line in lines.items())
        say(f"==> matrix: {len(cells)} cells, {limit} at once; images from their manifests: {checked_as}")
        start = time.monotonic()
        results = m.run_matrix(cells, version, root, limit)
        wall = time.monotonic() - start
        text = m.write_summary(results, m.reports_dir(root, version) / "matrix.md", wall, limit, lines)
        print(text)
        if any(r.status != "PASS" for r in results):
            raise SystemExit(1)
