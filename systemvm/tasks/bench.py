"""``invoke bench``: print timings and sizes (never a pass/fail)."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from systemvm import naming
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION
from systemvm.tasks import user_errors

SECTIONS = "build,boot,export,sizes,sbom,kvm,router,xenserver,vmware,seed,cleanroom,matrix"


@task(
    help={
        "flavour": "amd64, i386, arm64 or all",
        "version": "template version",
        "sections": f"comma-separated subset of {SECTIONS}",
        "cold": "also time a cold build (moves the package cache aside for it)",
        "artifacts": "artifacts directory",
    }
)
def bench(
    c: Context,
    flavour: str = "all",
    version: str = DEFAULT_VERSION,
    sections: str = SECTIONS,
    cold: bool = False,
    artifacts: str = str(ARTIFACTS_DIR),
) -> None:
    """Benchmarks: build (cold/warm), sizes, QEMU boot to SSH, exports, router forwarding, hypervisor paths,
    seeding, matrix."""
    from systemvm.bench import bench as run

    with user_errors():
        run(
            naming.flavours(flavour), version, Path(artifacts), [s.strip() for s in sections.split(",")], cold
        )
