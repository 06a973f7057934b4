"""Artifact names, as CloudStack publishes them. One place, so the build, exports and seeding agree."""

from __future__ import annotations

from pathlib import Path

from systemvm import defaults

FLAVOURS = defaults.FLAVOURS
# Debian architecture -> the architecture word CloudStack uses in file names and metadata.ini
ARCH_OF = {"amd64": "x86_64", "i386": "i386"}


def flavours(choice: str) -> list[str]:
    """``amd64``, ``i386`` or ``all`` -> list of flavours."""
    from systemvm.errors import UserError

    if choice == "all":
        return list(FLAVOURS)
    if choice not in FLAVOURS:
        raise UserError(f"unknown flavour '{choice}': use one of {', '.join(FLAVOURS)}, all")
    return [choice]


def version_dir(artifacts: Path, version: str) -> Path:
    return Path(artifacts) / version


def stem(version: str, flavour: str) -> str:
    return f"systemvmtemplate-{version}-{ARCH_OF[flavour]}"


def raw_disk(artifacts: Path, version: str, flavour: str) -> Path:
    return version_dir(artifacts, version) / f"{stem(version, flavour)}.raw"


def manifest(artifacts: Path, version: str, flavour: str) -> Path:
    return version_dir(artifacts, version) / f"{stem(version, flavour)}.manifest.json"


def export_name(version: str, flavour: str, fmt: str) -> str:
    suffix = {
        "qcow2": "kvm.qcow2.bz2",
        "vhd": "xen.vhd.bz2",
        "ova": "vmware.ova",
        "hyperv": "hyperv.vhd.zip",
    }[fmt]
    return f"{stem(version, flavour)}-{suffix}"
