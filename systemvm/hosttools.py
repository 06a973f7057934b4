"""What each phase needs on the host, and the Debian package that brings it: one table, read by
``invoke doctor``, by every phase before it starts, and by the clean-room check of host-packages.txt.

A need is a command on ``PATH`` (what the code runs), the package that ships it, and the phase that runs it.
host-packages.txt must hold every package named here (a unit test checks it against dpkg's own file lists),
so a tool added to a phase without its package shows up at once, on every host, not only on a fresh one.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from systemvm.errors import UserError

PIP_PACKAGE = "pip install -e .  (or ./setup.sh)"
PHASES = ("build", "export", "boot", "test", "seed")


@dataclass(frozen=True)
class Need:
    tool: str  # a command on PATH
    package: str  # the Debian package that ships it (or the pip requirement)
    phase: str
    why: str = ""


NEEDS: tuple[Need, ...] = (
    # build: diskimage-builder makes the root fs (bootstrapping with mmdebstrap), we assemble the MBR disk
    Need("disk-image-create", PIP_PACKAGE, "build", "diskimage-builder runs the elements"),
    Need("debootstrap", "debootstrap", "build", "diskimage-builder's debian-minimal checks for it"),
    Need("mmdebstrap", "mmdebstrap", "build", "bootstraps the root with every package"),
    Need("apt-cacher-ng", "apt-cacher-ng", "build", "the package cache both flavours share"),
    Need("qemu-img", "qemu-utils", "build", "diskimage-builder converts its output"),
    Need("sfdisk", "fdisk", "build", "writes the MBR"),
    Need("mkfs.ext4", "e2fsprogs", "build"),
    Need("debugfs", "e2fsprogs", "build", "reads GRUB's boot code out of the root fs"),
    Need("losetup", "mount", "build"),
    Need("sudo", "sudo", "build", "diskimage-builder calls it even as root"),
    Need("uuidgen", "uuid-runtime", "build", "diskimage-builder's block device layer"),
    Need("gpg", "gpg", "build", "verifies the mirror's Release files"),
    Need("curl", "curl", "build"),
    Need("xz", "xz-utils", "build"),
    Need("zstd", "zstd", "build"),
    # export
    Need("qemu-img", "qemu-utils", "export", "writes QCOW2"),
    Need("lbzip2", "lbzip2", "export", "compresses in parallel"),
    Need("bzip2", "bzip2", "export"),
    Need("vhdiinfo", "libvhdi-utils", "export", "reads each VHD back"),
    Need("vmdkinfo", "libvmdk-utils", "export", "reads each VMDK back"),
    Need("xmllint", "libxml2-utils", "export", "validates the OVF against DMTF's schema"),
    # boot
    Need("qemu-system-x86_64", "qemu-system-x86", "boot"),
    Need("qemu-system-i386", "qemu-system-x86", "boot"),
    Need("libvirtd", "libvirt-daemon-system", "boot"),
    Need("virtlogd", "libvirt-daemon-system", "boot"),
    Need("virt-xml-validate", "libvirt-clients", "boot", "validates the domain XML"),
    Need("ssh", "openssh-client", "boot"),
    Need("ssh-keygen", "openssh-client", "boot"),
    Need("ip", "iproute2", "boot", "test networks in namespaces"),
    # test (stand-ins and host-side checks)
    Need("go", "golang-go", "test", "builds vcsim from Debian's govmomi sources"),
    Need("mariadbd", "mariadb-server", "test", "the seed tests' CloudStack database"),
    Need("qemu-ga", "qemu-guest-agent", "test", "the command-line delivery test talks to a real agent"),
    Need("iptables-restore", "iptables", "test", "the firewall rules are loaded into a namespace"),
    Need("unshare", "util-linux", "test"),
    # the network lab (systemvm/boot/labservices.py): services in namespaces behind the VMs' data NICs.
    # charon itself is /usr/lib/ipsec/charon (strongswan-charon, not on PATH; libcharon-extra-plugins brings
    # its kernel-libipsec plugin), ganesha's file system back end is nfs-ganesha-vfs (both listed)
    Need("swanctl", "strongswan-swanctl", "test", "loads the lab's IPsec peer into its charon"),
    Need("ganesha.nfsd", "nfs-ganesha", "test", "the lab's NFS export (no kernel nfsd needed)"),
    Need("rpcbind", "rpcbind", "test", "the lab's NFS export answers NFSv3 MOUNT through its own rpcbind"),
    Need("iperf3", "iperf3", "test", "the lab's throughput server"),
    Need("nfs-cat", "libnfs-utils", "test", "the lab tests read the NFS export from a namespace"),
    Need("iptables", "iptables", "test", "the lab tests' fake router translates addresses"),
    # seed
    Need("mount.nfs", "nfs-common", "seed", "secondary storage is an NFS export"),
    Need("qemu-img", "qemu-utils", "seed"),
    Need("bzip2", "bzip2", "seed"),
)

PACKAGE_OF: dict[str, str] = {need.tool: need.package for need in NEEDS}


def host_arch() -> str:
    """The host's Debian architecture (dpkg's word), or one guessed from the kernel without dpkg."""
    if shutil.which("dpkg"):
        done = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return {"x86_64": "amd64", "i686": "i386", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def foreign_needs(archs: Iterable[str], native: str | None = None) -> list[Need]:
    """A flavour whose architecture is not the host's: mmdebstrap asks arch-test whether it can run it."""
    native = native or host_arch()
    if all(arch == native for arch in archs):
        return []
    return [Need("arch-test", "arch-test", "build", "mmdebstrap's check for a foreign architecture")]


def needs_for(phases: Iterable[str], archs: Iterable[str] = ()) -> list[Need]:
    """The needs of these phases (deduplicated by tool), plus what a foreign flavour adds to a build."""
    phases = list(phases)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise UserError(f"unknown phase '{unknown[0]}': use one of {', '.join(PHASES)}")
    chosen: dict[str, Need] = {}
    extra = foreign_needs(archs) if "build" in phases else []
    for need in [*NEEDS, *extra]:
        if need.phase in phases and need.tool not in chosen:
            chosen[need.tool] = need
    return list(chosen.values())


def missing(needs: Iterable[Need], path: str | None = None) -> list[Need]:
    """The needs whose command is not on ``path`` (default: this process's PATH)."""
    return [need for need in needs if shutil.which(need.tool, path=path) is None]


def packages_line(lacking: Iterable[Need]) -> str:
    debian = sorted({n.package for n in lacking if n.package != PIP_PACKAGE})
    parts = [f"apt-get install {' '.join(debian)}"] if debian else []
    if any(n.package == PIP_PACKAGE for n in lacking):
        parts.append(PIP_PACKAGE)
    return " and ".join(parts)


def check_phase(phase: str, archs: Iterable[str] = ()) -> None:
    """Refuse to start ``phase`` when the host lacks a tool: one line listing every package to install."""
    lacking = missing(needs_for([phase], archs))
    if lacking:
        tools = ", ".join(sorted({n.tool for n in lacking}))
        raise UserError(
            f"this host lacks what '{phase}' needs ({tools}): {packages_line(lacking)} (or run ./setup.sh)"
        )


def check_foreign_arch(arch: str) -> None:
    """arch-test answers whether this kernel can run ``arch`` binaries (i386 on amd64: yes, if IA32 is on)."""
    if arch == host_arch() or shutil.which("arch-test") is None:
        return
    done = subprocess.run(["arch-test", arch], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(
            f"this host cannot run {arch} programs ({done.stdout.strip() or 'arch-test said no'}): "
            "install qemu-user-static and binfmt-support, or build on a host of that architecture"
        )


def require_tools(*tools: str) -> None:
    """Raise a one-line UserError naming the first missing tool and the package to install."""
    for tool in tools:
        if shutil.which(tool) is None:
            package = PACKAGE_OF.get(tool, tool)
            raise UserError(f"missing host tool '{tool}': install it with 'apt-get install {package}'")


def host_packages_file() -> Path:
    """The list setup.sh installs, at the top of the repository."""
    return Path(__file__).resolve().parent.parent / "host-packages.txt"


def read_host_packages(path: Path) -> list[str]:
    """host-packages.txt: one Debian package a line, ``#`` starts a comment."""
    names: list[str] = []
    for line in path.read_text().splitlines():
        names.extend(line.split("#", 1)[0].split())
    return names
