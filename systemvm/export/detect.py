"""What kind of file an artifact is, from its bytes: the one table of magic numbers every phase asks.

``kind_of(path)`` -> ``qcow2``, ``vhd`` (dynamic, or fixed by its footer), ``vmdk``, ``vmdk-descriptor``,
``vhdx``, ``bz2``, ``gzip``, ``xz``, ``zip``, ``ova`` (any tar) or ``raw`` (none of these).
"""

from __future__ import annotations

import os
from pathlib import Path

HEAD_BYTES = 512
VHD_COOKIE = b"conectix"

# (offset, magic, kind), checked in this order against the file's first bytes
MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QFI\xfb", "qcow2"),
    (0, VHD_COOKIE, "vhd"),
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk-descriptor"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"BZh", "bz2"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"PK\x03\x04", "zip"),
    (257, b"ustar", "ova"),
)
COMPRESSIONS = ("bz2", "gzip", "xz", "zip")
# kind -> how messages name it
DESCRIPTION = {
    "qcow2": "qcow2",
    "vhd": "VHD",
    "vmdk": "VMDK",
    "vmdk-descriptor": "VMDK descriptor",
    "vhdx": "VHDX",
    "bz2": "bzip2",
    "gzip": "gzip",
    "xz": "xz",
    "zip": "zip",
    "ova": "tar/OVA",
    "raw": "raw",
}


def kind_of_bytes(head: bytes, tail: bytes = b"") -> str:
    """The kind from the first bytes (and the last 512, where a fixed VHD keeps its footer)."""
    for offset, magic, kind in MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return kind
    if tail[:8] == VHD_COOKIE:
        return "vhd"
    return "raw"


def kind_of(path: Path) -> str:
    """The kind of the file at ``path`` (see the module's docstring)."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        size = os.fstat(handle.fileno()).st_size
        tail = b""
        if size >= HEAD_BYTES:
            handle.seek(size - HEAD_BYTES)
            tail = handle.read(HEAD_BYTES)
    return kind_of_bytes(head, tail)


def compression_of(head: bytes) -> str:
    """``bz2``, ``gzip``, ``xz``, ``zip`` or ``none`` from the first bytes of an artifact."""
    kind = kind_of_bytes(head)
    return kind if kind in COMPRESSIONS else "none"
