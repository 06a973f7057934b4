"""``invoke bench``: print timings and sizes (never a pass/fail)."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from systemvm import naming
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION
from systemvm.tasks import user_errors

SECTIONS = "build,boot,export,sbom,kvm,router,xenserver,vmware,seed,cleanroom,matrix"


@task(
    help={
        "flavour": "amd64, i386 or all",
        "version": "template version",
        "sections": f"comma-separated subset of {SECTIONS}",
        "cold": "also time a cold build (moves the package cache aside for it)",
        "artifacts": "artifacts directory",
    }
)
def bench(
    c, flavour="all", version=DEFAULT_VERSION, sections=SECTIONS, cold=False, artifacts=str(ARTIFACTS_DIR)
):
    """Benchmarks: build (cold/warm), sizes, QEMU boot to SSH, exports, router forwarding, hypervisor paths,
    seeding, matrix."""
    from systemvm.bench import bench as run

    with user_errors():
        run(
            naming.flavours(flavour), version, Path(artifacts), [s.strip() for s in sections.split(",")], cold
        )
