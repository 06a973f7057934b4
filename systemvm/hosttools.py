"""Host tools the project shells out to, and the Debian package that provides each."""

from __future__ import annotations

import shutil

from systemvm.errors import UserError

# tool -> Debian package that ships it
PACKAGE_OF: dict[str, str] = {
    "debootstrap": "debootstrap",
    "mmdebstrap": "mmdebstrap",
    "disk-image-create": "diskimage-builder (pip install diskimage-builder)",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-i386": "qemu-system-x86",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "losetup": "mount",
    "grub-mkimage": "grub-common",
    "bzip2": "bzip2",
    "lbzip2": "lbzip2",
    "vhdiinfo": "libvhdi-utils",
    "vhdiexport": "libvhdi-utils",
    "vmdkinfo": "libvmdk-utils",
    "vmdkexport": "libvmdk-utils",
    "xmllint": "libxml2-utils",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "apt-cacher-ng": "apt-cacher-ng",
    "libvirtd": "libvirt-daemon-system",
    "go": "golang-go",
    "mariadbd": "mariadb-server",
    "mount.nfs": "nfs-common",
    "virtlogd": "libvirt-daemon-system",
    "qemu-ga": "qemu-guest-agent",
}


def require_tools(*tools: str) -> None:
    """Raise a one-line UserError naming the first missing tool and the package to install."""
    for tool in tools:
        if shutil.which(tool) is None:
            package = PACKAGE_OF.get(tool, tool)
            raise UserError(f"missing host tool '{tool}': install it with 'apt-get install {package}'")
