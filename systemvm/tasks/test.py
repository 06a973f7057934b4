"""``invoke test`` (one VM through the appliance suite) and ``invoke matrix`` (every cell)."""

from __future__ import annotations

import time
from pathlib import Path

from invoke import task

from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION
from systemvm.tasks import user_errors


@task(
    help={
        "hypervisor": "kvm, xenserver or vmware",
        "flavour": "amd64 or i386",
        "role": "secstorage, consoleproxy, router, vpcrouter, dhcpsrvr, ilbvm or elbvm (default secstorage)",
        "version": "template version X.Y.Z (default 4.20.0)",
        "artifacts": "artifacts directory holding <version>/ (default ./artifacts)",
        "artifact": "boot this file instead of the exported artifact",
    }
)
def test(
    c,
    hypervisor="kvm",
    flavour="amd64",
    role="secstorage",
    version=DEFAULT_VERSION,
    artifacts=None,
    artifact=None,
):
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
        "flavours": "comma list of amd64,i386 (default both)",
        "roles": "comma list, or all (default secstorage,consoleproxy,router)",
        "version": "template version X.Y.Z (default 4.20.0)",
        "artifacts": "artifacts directory holding <version>/ (default ./artifacts)",
    }
)
def matrix(
    c, jobs=None, hypervisors=None, flavours=None, roles=None, version=DEFAULT_VERSION, artifacts=None
):
    """Run the appliance suite for every flavour x role x configured hypervisor; print one summary table."""
    from systemvm.check import matrix as m
    from systemvm.interrupts import sigterm_is_interrupt
    from systemvm.progress import say

    sigterm_is_interrupt()  # a killed matrix stops its cells, which remove their VMs and labs
    with user_errors():
        root = Path(artifacts) if artifacts else ARTIFACTS_DIR
        cells = m.plan_matrix(hypervisors, flavours, roles)
        limit = m.jobs_for_host(int(jobs) if jobs is not None else None)
        say(f"==> matrix: {len(cells)} cells, {limit} at once")
        start = time.monotonic()
        results = m.run_matrix(cells, version, root, limit)
        wall = time.monotonic() - start
        text = m.write_summary(results, m.reports_dir(root, version) / "matrix.md", wall, limit)
        print(text)
        if any(r.status != "PASS" for r in results):
            raise SystemExit(1)
