"""Facts the phases share, each defined once: names (roles, flavours, hypervisors), the default version,
where artifacts go, where caches live, and where published templates are downloaded from.

The enums are ``StrEnum``s: a member is its string (``Role.ROUTER == "router"``), so command-line values,
file names and JSON keep working unchanged.
"""

from __future__ import annotations

import os
from enum import StrEnum
from importlib import resources
from pathlib import Path


class Role(StrEnum):
    """The System VM roles CloudStack boots the template as (the order of :data:`systemvm.contract.ROLES`)."""

    SECSTORAGE = "secstorage"
    CONSOLEPROXY = "consoleproxy"
    ROUTER = "router"
    VPCROUTER = "vpcrouter"
    DHCPSRVR = "dhcpsrvr"
    ILBVM = "ilbvm"
    ELBVM = "elbvm"


class Flavour(StrEnum):
    """Debian architectures the template is built for (arm64: built and booted under emulation on x86)."""

    AMD64 = "amd64"
    I386 = "i386"
    ARM64 = "arm64"


class Hypervisor(StrEnum):
    """Hypervisors the harness boots the exports on (one driver each in :mod:`systemvm.boot.hypervisors`)."""

    KVM = "kvm"
    XENSERVER = "xenserver"
    VMWARE = "vmware"


ROLES: tuple[Role, ...] = tuple(Role)
FLAVOURS: tuple[Flavour, ...] = tuple(Flavour)
# The flavours whose disk boots through UEFI (GPT, an EFI system partition, GRUB's EFI program at the
# removable-media path): arm64, as CloudStack's aarch64 template (Arm KVM hosts boot only UEFI). The others
# boot through BIOS (MBR, GRUB for i386-pc).
UEFI_FLAVOURS: frozenset[Flavour] = frozenset({Flavour.ARM64})
HYPERVISORS: tuple[Hypervisor, ...] = tuple(Hypervisor)

# The newest supported CloudStack line (systemvm.profile), what a new user runs.
DEFAULT_VERSION = "4.22.0"
# Output of every phase: <ARTIFACTS_DIR>/<version>/... Relative, so it is ./artifacts of the directory the
# tasks run in (the repository's root for `invoke`).
ARTIFACTS_DIR = Path("artifacts")
# Where metadata.ini points when no --base-url is given: a placeholder, to be replaced by the real mirror.
DOWNLOAD_BASE_URL = "https://download.example.org/systemvm"


def elements_dir() -> Path:
    """The diskimage-builder elements: ``systemvm/elements`` is package data (in the repository a link to
    the top-level ``elements/``), so an installed package finds the package lists the checks read."""
    return Path(str(resources.files("systemvm") / "elements")).resolve()


def cache_root() -> Path:
    """``$SYSTEMVM_CACHE``, else ``$XDG_CACHE_HOME/systemvm``, else ``~/.cache/systemvm``."""
    if os.environ.get("SYSTEMVM_CACHE"):
        return Path(os.environ["SYSTEMVM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "systemvm"
