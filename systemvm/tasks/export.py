"""``invoke export``: qcow2.bz2, vhd.bz2, ova and hyperv.vhd.zip of the built raw disks, plus checksums
and metadata.ini."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from systemvm.defaults import ARTIFACTS_DIR
from systemvm.tasks import user_errors


@task(
    help={
        "flavour": "amd64, i386, arm64 or all (default all; arm64 is exported as qcow2 only)",
        "formats": "comma-separated: qcow2,vhd,ova,hyperv (default all four)",
        "version": "template version X.Y.Z (its CloudStack line, 4.20 or 4.22, decides metadata.ini)",
        "base-url": "URL of the directory the files will be published in (metadata.ini downloadurl)",
        "artifacts": "artifacts directory holding <version>/ (default ./artifacts)",
        "previous": "directory of the previous release: also write release-diff.md/.json against it",
    }
)
def export(
    c: Context,
    version: str,
    flavour: str = "all",
    formats: str = "qcow2,vhd,ova,hyperv",
    base_url: str | None = None,
    artifacts: str | None = None,
    previous: str | None = None,
) -> None:
    """Export VERSION's raw disks as CloudStack publishes them (with the SOURCE_DATE_EPOCH of the build)."""
    with user_errors():
        from systemvm import naming
        from systemvm.export.release import load_manifests, plan_release, publish_release
        from systemvm.profile import profile_for

        naming.check_version(version)
        profile_for(version)  # an unsupported CloudStack line is refused before anything else
        flavours = naming.flavours(flavour)
        plan = plan_release(formats, previous, base_url)
        out_dir = naming.version_dir(Path(artifacts) if artifacts else ARTIFACTS_DIR, version)
        release = publish_release(load_manifests(out_dir, version, flavours), out_dir, plan)
        for line in release.lines():
            print(line)
