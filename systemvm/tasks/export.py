"""``invoke export``: qcow2.bz2, vhd.bz2, ova and hyperv.vhd.zip of the built raw disks, plus checksums
and metadata.ini."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from systemvm.defaults import ARTIFACTS_DIR
from systemvm.tasks import user_errors


@task(
    help={
        "flavour": "amd64, i386 or all (default all)",
        "formats": "comma-separated: qcow2,vhd,ova,hyperv (default all four)",
        "version": "template version X.Y.Z, e.g. 4.20.0",
        "base-url": "URL of the directory the files will be published in (metadata.ini downloadurl)",
        "artifacts": "artifacts directory holding <version>/ (default ./artifacts)",
        "previous": "directory of the previous release: also write release-diff.md/.json against it",
    }
)
def export(
    c, version, flavour="all", formats="qcow2,vhd,ova,hyperv", base_url=None, artifacts=None, previous=None
):
    """Export VERSION's raw disks as CloudStack publishes them (SOURCE_DATE_EPOCH: env, else manifest)."""
    with user_errors():
        from systemvm import naming
        from systemvm.export.export import epoch_for, export_flavours, parse_formats

        root = Path(artifacts) if artifacts else ARTIFACTS_DIR
        chosen = parse_formats(formats)
        out_dir = naming.version_dir(root, version)
        if previous:  # a wrong directory fails before the exports
            from systemvm.export.releasediff import load_release

            load_release(Path(previous), "previous")
        names = naming.flavours(flavour)
        everything = export_flavours(
            {name: naming.raw_disk(root, version, name) for name in names},
            out_dir,
            version,
            chosen,
            epochs={name: epoch_for(naming.manifest(root, version, name)) for name in names},
            base_url=base_url,
        )
        for results in everything.values():
            for info in results.values():
                print(f"{info['file']}  {info['size']} bytes  sha512 {info['sha512'][:16]}...")
        if previous:
            from systemvm.export.releasediff import write_release_diff

            for path in write_release_diff(Path(previous), out_dir):
                print(path)
