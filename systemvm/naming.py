"""Artifact names, as CloudStack publishes them. One place, so the build, exports and seeding agree."""

from __future__ import annotations

import re
from pathlib import Path

from systemvm import defaults

FLAVOURS = defaults.FLAVOURS
# Debian architecture -> the architecture word CloudStack uses in file names and metadata.ini
# (aarch64: tools/appliance/build.sh and engine/schema/templateConfig.sh in apache/cloudstack)
ARCH_OF = {"amd64": "x86_64", "i386": "i386", "arm64": "aarch64"}
# export format -> the end of its file name
EXPORT_SUFFIX = {
    "qcow2": "kvm.qcow2.bz2",
    "vhd": "xen.vhd.bz2",
    "ova": "vmware.ova",
    "hyperv": "hyperv.vhd.zip",
}
# Export formats, in that order.
FORMATS = tuple(EXPORT_SUFFIX)
# What each flavour publishes. CloudStack builds its aarch64 template for KVM only (tools/appliance/build.sh
# makes the Xen, VMware and Hyper-V files only for an x86_64 target): arm64 is a qcow2.bz2 and nothing else.
PUBLISHED_FORMATS = {"amd64": FORMATS, "i386": FORMATS, "arm64": ("qcow2",)}


def published_formats(flavour: str, wanted: list[str] | tuple[str, ...] = FORMATS) -> list[str]:
    """Of ``wanted`` (in canonical order), the formats ``flavour`` is published in."""
    return [fmt for fmt in wanted if fmt in PUBLISHED_FORMATS[flavour]]


def flavour_of_arch(arch: str) -> str | None:
    """The flavour (Debian architecture) whose files carry CloudStack's architecture word ``arch``."""
    return {word: flavour for flavour, word in ARCH_OF.items()}.get(arch)


def flavours(choice: str) -> list[str]:
    """``amd64``, ``i386``, ``arm64`` or ``all`` -> list of flavours."""
    from systemvm.errors import UserError

    if choice == "all":
        return list(FLAVOURS)
    if choice not in FLAVOURS:
        raise UserError(f"unknown flavour '{choice}': use one of {', '.join(FLAVOURS)}, all")
    return [choice]


def check_version(version: str) -> None:
    """A release version is X.Y.Z (with an optional suffix): never a path (``../x``)."""
    import re

    from systemvm.errors import UserError

    if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-.+][0-9A-Za-z.-]+)?", version):
        raise UserError(f"version '{version}' is not X.Y.Z: pass e.g. --version {defaults.DEFAULT_VERSION}")


def version_dir(artifacts: Path, version: str) -> Path:
    return Path(artifacts) / version


def stem(version: str, flavour: str) -> str:
    return f"systemvmtemplate-{version}-{ARCH_OF[flavour]}"


def raw_disk(artifacts: Path, version: str, flavour: str) -> Path:
    return version_dir(artifacts, version) / f"{stem(version, flavour)}.raw"


def manifest(artifacts: Path, version: str, flavour: str) -> Path:
    return version_dir(artifacts, version) / f"{stem(version, flavour)}.manifest.json"


def export_name(version: str, flavour: str, fmt: str) -> str:
    return f"{stem(version, flavour)}-{EXPORT_SUFFIX[fmt]}"


def parse_export_name(name: str) -> tuple[str, str, str] | None:
    """(version, architecture word, format) of an exported artifact's name, for every architecture ARCH_OF
    knows (read at call time); None for any other name."""
    archs = "|".join(sorted(map(re.escape, set(ARCH_OF.values()))))
    suffixes = "|".join(map(re.escape, EXPORT_SUFFIX.values()))
    match = re.fullmatch(rf"systemvmtemplate-(?P<version>.+?)-(?P<arch>{archs})-(?P<suffix>{suffixes})", name)
    if not match:
        return None
    fmt = {suffix: fmt for fmt, suffix in EXPORT_SUFFIX.items()}[match.group("suffix")]
    return match.group("version"), match.group("arch"), fmt
