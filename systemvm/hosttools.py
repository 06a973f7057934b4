"""What each phase needs on the host, and the Debian package that brings it: one table, read by
``invoke doctor``, by every phase before it starts, and by the clean-room check of host-packages.txt.

A need is a command on ``PATH`` (what the code runs), the package that ships it, and the phase that runs it.
host-packages.txt must hold every package named here (a unit test checks it against dpkg's own file lists),
so a tool added to a phase without its package shows up at once, on every host, not only on a fresh one.
"""

from __future__ import annotations

import os
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
    tool: str  # a command on PATH, or an absolute path of a data file (firmware)
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
    # the network lab (systemvm/lab/services.py): services in namespaces behind the VMs' data NICs.
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

# What one flavour adds to the phases above. arm64 is a UEFI template (a GPT disk with a FAT EFI system
# partition, made as files) that runs through QEMU's aarch64 emulator here: qemu-user for its programs at
# build time, qemu-system-aarch64 with the AAVMF firmware at boot time.
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"  # 64 MiB, already the pflash size (qemu-efi-aarch64)
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"  # the empty variable store each VM gets a copy of
FLAVOUR_NEEDS: dict[str, tuple[Need, ...]] = {
    "arm64": (
        Need(
            "qemu-aarch64-static",
            "qemu-user-static",
            "build",
            "runs the arm64 image's programs (binfmt_misc, F flag)",
        ),
        Need("sgdisk", "gdisk", "build", "writes the GPT"),
        Need("mkfs.fat", "dosfstools", "build", "makes the EFI system partition"),
        Need("mcopy", "mtools", "build", "puts GRUB's EFI program into the EFI system partition"),
        Need("mdir", "mtools", "build", "reads the EFI system partition back"),
        Need("qemu-system-aarch64", "qemu-system-arm", "boot"),
        Need(AAVMF_CODE, "qemu-efi-aarch64", "boot", "the UEFI firmware of arm64 VMs"),
        Need(AAVMF_VARS, "qemu-efi-aarch64", "boot", "the empty UEFI variable store"),
    ),  # fmt: skip
}

PACKAGE_OF: dict[str, str] = {
    need.tool: need.package for need in (*NEEDS, *(n for needs in FLAVOUR_NEEDS.values() for n in needs))
}


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


def flavour_needs(archs: Iterable[str]) -> list[Need]:
    """What the chosen flavours add to the phases (:data:`FLAVOUR_NEEDS`)."""
    return [need for arch in dict.fromkeys(archs) for need in FLAVOUR_NEEDS.get(arch, ())]


def needs_for(phases: Iterable[str], archs: Iterable[str] = ()) -> list[Need]:
    """The needs of these phases (deduplicated by tool), plus what the flavours add (a foreign one to a
    build: arch-test; arm64: qemu-user, the GPT and FAT tools, the aarch64 emulator and its firmware)."""
    phases = list(phases)
    archs = list(archs)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise UserError(f"unknown phase '{unknown[0]}': use one of {', '.join(PHASES)}")
    chosen: dict[str, Need] = {}
    extra = foreign_needs(archs) if "build" in phases else []
    for need in [*NEEDS, *extra, *flavour_needs(archs)]:
        if need.phase in phases and need.tool not in chosen:
            chosen[need.tool] = need
    return list(chosen.values())


def present(tool: str, path: str | None = None) -> bool:
    """A command on ``path`` (default: this process's PATH), or a data file at its absolute path."""
    if os.path.isabs(tool):
        return os.path.isfile(tool)
    return shutil.which(tool, path=path) is not None


def missing(needs: Iterable[Need], path: str | None = None) -> list[Need]:
    """The needs whose command is not on ``path`` (default: this process's PATH) or whose file is absent."""
    return [need for need in needs if not present(need.tool, path)]


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
    """arch-test answers whether this kernel can run ``arch`` binaries (i386 on amd64: yes, if IA32 is on);
    for a flavour qemu-user runs, binfmt_misc must also hold its interpreter with the F flag."""
    if arch == host_arch():
        return
    if arch in QEMU_ARCH:
        check_binfmt(arch)
    if shutil.which("arch-test") is None:
        return
    done = subprocess.run(["arch-test", arch], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(
            f"this host cannot run {arch} programs ({done.stdout.strip() or 'arch-test said no'}): "
            "install qemu-user-static and binfmt-support, or build on a host of that architecture"
        )


# ------------------------------------------------------------------------------ qemu-user through binfmt_misc

# Debian architecture -> QEMU's name for it, for the flavours whose programs qemu-user runs on an x86 host.
QEMU_ARCH = {"arm64": "aarch64"}
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
# qemu-user-static's registration lines, in the register file's own format (systemd-binfmt reads them).
BINFMT_D = Path("/usr/lib/binfmt.d")


@dataclass(frozen=True)
class BinfmtEntry:
    """``/proc/sys/fs/binfmt_misc/<name>`` as the kernel reports it."""

    enabled: bool
    interpreter: str
    flags: str


def parse_binfmt_entry(text: str) -> BinfmtEntry:
    enabled = False
    interpreter = flags = ""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if line.strip() == "enabled":
            enabled = True
        elif key == "interpreter":
            interpreter = value.strip()
        elif key == "flags:":
            flags = value.strip()
    return BinfmtEntry(enabled, interpreter, flags)


def binfmt_fix(arch: str) -> str:
    """The one command that makes ``arch`` programs run in a chroot here (mount, register with F)."""
    return f"run 'invoke doctor --flavour {arch} --register-binfmt' as root (./setup.sh does it)"


def binfmt_problem(arch: str, binfmt_misc: Path | None = None) -> str | None:
    """Why the kernel cannot run ``arch`` programs inside a chroot through qemu-user; None when it can.

    The F (fix-binary) flag makes the kernel open the interpreter when it is registered, so the chroot
    needs no copy of qemu; diskimage-builder's chroot has none.
    """
    name = f"qemu-{QEMU_ARCH[arch]}"
    binfmt_misc = binfmt_misc or BINFMT_MISC
    if not (binfmt_misc / "register").exists():
        return f"binfmt_misc is not mounted on {binfmt_misc}"
    entry_path = binfmt_misc / name
    if not entry_path.is_file():
        return f"no {name} interpreter is registered in {binfmt_misc}"
    entry = parse_binfmt_entry(entry_path.read_text(errors="replace"))
    if not entry.enabled:
        return f"the {name} interpreter in {binfmt_misc} is disabled"
    if "F" not in entry.flags:
        return f"the {name} interpreter is registered without the F flag (flags: {entry.flags or 'none'})"
    if not os.path.exists(entry.interpreter):
        return f"the {name} interpreter {entry.interpreter} does not exist"
    return None


def check_binfmt(arch: str, binfmt_misc: Path | None = None) -> None:
    problem = binfmt_problem(arch, binfmt_misc)
    if problem:
        raise UserError(f"this host cannot run {arch} programs in a chroot ({problem}): {binfmt_fix(arch)}")


def register_binfmt(arch: str, binfmt_misc: Path | None = None, conf_dir: Path | None = None) -> str:
    """Mount binfmt_misc when it is not, and register qemu-user-static's interpreter for ``arch`` with the
    F flag, as systemd-binfmt does at boot (hosts and containers without it have nothing registered).
    An entry without the F flag is replaced. Returns what was done, in one line."""
    binfmt_misc = binfmt_misc or BINFMT_MISC
    conf_dir = conf_dir or BINFMT_D
    if binfmt_problem(arch, binfmt_misc) is None:
        return f"{arch}: qemu-{QEMU_ARCH[arch]} already registered with the F flag"
    if os.geteuid() != 0:
        raise UserError(f"registering qemu-{QEMU_ARCH[arch]} in binfmt_misc needs root: run it as root")
    conf = conf_dir / f"qemu-{QEMU_ARCH[arch]}.conf"
    if not conf.is_file():
        raise UserError(f"{conf} is missing: apt-get install qemu-user-static")
    line = next((x for x in conf.read_text().splitlines() if x.startswith(":")), "")
    fields = line.split(":")
    if len(fields) < 8 or "F" not in fields[7]:
        raise UserError(f"{conf} does not register with the F flag: reinstall qemu-user-static")
    if not (binfmt_misc / "register").exists():
        done = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_misc)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise UserError(f"cannot mount binfmt_misc on {binfmt_misc}: {done.stderr.strip()}")
    entry = binfmt_misc / f"qemu-{QEMU_ARCH[arch]}"
    if entry.exists():  # disabled, or without the F flag: remove it, then register again
        entry.write_text("-1")
    (binfmt_misc / "register").write_text(line)
    problem = binfmt_problem(arch, binfmt_misc)
    if problem:
        raise UserError(f"registered qemu-{QEMU_ARCH[arch]}, but {problem}")
    return f"{arch}: registered qemu-{QEMU_ARCH[arch]} ({fields[6]}, flags {fields[7]})"


def require_tools(*tools: str) -> None:
    """Raise a one-line UserError naming the first missing tool (or firmware file) and its package."""
    for tool in tools:
        if not present(tool):
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
