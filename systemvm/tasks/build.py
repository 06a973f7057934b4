"""``invoke build``: raw disks per flavour, then (by default) the exports."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from systemvm import naming
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION
from systemvm.tasks import user_errors


@task(
    help={
        "flavour": "amd64, i386, arm64 or all",
        "version": "template version X.Y.Z: names the artifacts and picks the CloudStack line (4.20, 4.22)",
        "mirror": "Debian mirror URL (default: $SYSTEMVM_DEBIAN_MIRROR, else the host's apt mirror)",
        "offline": "use only cached packages (fails if the cache is cold)",
        "export": "also write QCOW2/VHD/OVA exports (default on; --no-export to skip)",
        "formats": "exports to write, comma-separated",
        "base_url": "download URL prefix written into metadata.ini",
        "artifacts": "output directory",
        "size_gib": "root filesystem size in GiB (the template's virtual disk size)",
        "jobs": "flavours built at once (default: one per core, at most the number of flavours)",
        "previous": "previous release's directory: write release-diff.md/.json against it after the exports",
        "cloudstack_scripts": "CloudStack's cloud-scripts.tgz or cloudstack-common .deb to bake in",
    }
)
def build(
    c: Context,
    flavour: str = "all",
    version: str = DEFAULT_VERSION,
    mirror: str | None = None,
    offline: bool = False,
    export: bool = True,
    formats: str = "qcow2,vhd,ova,hyperv",
    base_url: str | None = None,
    artifacts: str = str(ARTIFACTS_DIR),
    size_gib: str = "5",
    jobs: str | None = None,
    previous: str | None = None,
    cloudstack_scripts: str | None = None,
) -> None:
    """Build the System VM template (Debian 12) from our diskimage-builder elements, then its release."""
    from systemvm.build import cloudstack_scripts as scripts_input
    from systemvm.build.image import check_version, plan_build, run_build
    from systemvm.export.release import plan_release, publish_release

    with user_errors():
        check_version(version)  # an unsupported CloudStack line is refused before anything else
        # every input checked first: a bad tool, file, format or directory ends the build before it starts
        scripts = scripts_input.load(cloudstack_scripts) if cloudstack_scripts else None
        build_plan = plan_build(
            naming.flavours(flavour),
            version,
            mirror_url=mirror,
            offline=offline,
            size_gib=size_gib,
            jobs=jobs,
            cloudstack_scripts=scripts,
        )
        release_plan = plan_release(formats if export else None, previous, base_url)
        manifests = run_build(build_plan, Path(artifacts))
        release = publish_release(manifests, naming.version_dir(Path(artifacts), version), release_plan)
        for line in release.lines():
            print(line)
