"""``invoke build``: raw disks per flavour, then (by default) the exports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from invoke import task

from systemvm import hosttools, naming
from systemvm.defaults import ARTIFACTS_DIR, DEFAULT_VERSION
from systemvm.tasks import user_errors


@task(
    help={
        "flavour": "amd64, i386 or all",
        "version": "template version X.Y.Z (names the artifacts)",
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
    c,
    flavour="all",
    version=DEFAULT_VERSION,
    mirror=None,
    offline=False,
    export=True,
    formats="qcow2,vhd,ova,hyperv",
    base_url=None,
    artifacts=str(ARTIFACTS_DIR),
    size_gib=5,
    jobs=None,
    previous=None,
    cloudstack_scripts=None,
):
    """Build the System VM template (Debian 12) from our diskimage-builder elements."""
    from systemvm.build import cloudstack_scripts as scripts_input
    from systemvm.build.image import build_flavours, check_host

    with user_errors():
        flavours = naming.flavours(flavour)
        # read and checked first: a bad file ends the build here, before anything is started or written
        scripts = scripts_input.load(cloudstack_scripts) if cloudstack_scripts else None
        check_host(*flavours)  # before anything starts: a missing tool fails now, naming its package
        if export:
            hosttools.check_phase("export")
        if previous:  # a wrong directory fails now, not after the build
            from systemvm.export.releasediff import load_release

            load_release(Path(previous), "previous")
        build_flavours(
            flavours,
            version,
            Path(artifacts),
            mirror_url=mirror,
            offline=offline,
            size_gib=int(size_gib),
            jobs=jobs,
            cloudstack_scripts=scripts,
        )
        if export and importlib.util.find_spec("systemvm.export.export") is not None:
            from systemvm.build.image import source_date_epoch
            from systemvm.export.export import export_flavours

            export_flavours(
                {one: naming.raw_disk(Path(artifacts), version, one) for one in flavours},
                naming.version_dir(Path(artifacts), version),
                version,
                [f.strip() for f in formats.split(",") if f.strip()],
                epochs=dict.fromkeys(flavours, source_date_epoch()),
                base_url=base_url,
            )
        if previous:
            from systemvm.export.releasediff import write_release_diff

            for path in write_release_diff(Path(previous), naming.version_dir(Path(artifacts), version)):
                print(path)
