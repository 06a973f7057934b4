"""Assemble a bootable MBR disk from a partitionless root filesystem image, without device-mapper.

Why ourselves: diskimage-builder's partitioned build needs kpartx/device-mapper for partition nodes, which
some build hosts (containers, this CI) lack. We let diskimage-builder make the filesystem on a whole loop
device (no partitions), then build the disk as a file: ``sfdisk`` writes the table, the filesystem is copied
sparsely to the partition offset, and GRUB's BIOS boot code is placed the way ``grub-bios-setup`` does for an
MBR disk with an embedding gap: ``boot.img`` in the first 440 bytes, ``core.img`` from sector 1. One code path
on every host, and no root needed for this step.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
from pathlib import Path

from systemvm.errors import UserError
from systemvm.hosttools import require_tools

SECTOR = 512
PARTITION_START_SECTOR = 2048  # 1 MiB: alignment, and the embedding gap for core.img
MBR_CODE_END = 0x1B8  # boot code area (disk signature follows)
# Offsets inside GRUB's i386-pc boot.img (grub/include/grub/i386/pc/boot.h)
BOOT_KERNEL_SECTOR = 0x5C  # 64-bit LBA of core.img's first sector
BOOT_DRIVE = 0x64  # 0xff: use the drive the BIOS booted from
BOOT_DRIVE_CHECK = 0x66  # a 2-byte jmp; grub-bios-setup NOPs it for hard disks (buggy-BIOS workaround)
BLOCKLIST_SIZE = 12  # diskboot.img's last 12 bytes: start (u64), length (u16), segment (u16)
CORE_LOAD_SEGMENT = 0x820  # where diskboot loads the rest of core.img (GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20)
COPY_CHUNK = 8 << 20


@dataclasses.dataclass(frozen=True)
class DiskLayout:
    fs_bytes: int
    disk_bytes: int
    partition_start: int  # bytes
    core_sectors: int


def plan_layout(fs_bytes: int, core_bytes: int) -> DiskLayout:
    if fs_bytes <= 0 or fs_bytes % SECTOR:
        raise UserError(f"root filesystem size {fs_bytes} is not a positive multiple of {SECTOR}: rebuild it")
    core_sectors = -(-core_bytes // SECTOR)
    if core_sectors < 2 or 1 + core_sectors > PARTITION_START_SECTOR:
        raise UserError(
            f"GRUB core.img of {core_bytes} bytes does not fit the {PARTITION_START_SECTOR - 1}-sector "
            "embedding gap: build it with fewer modules"
        )
    start = PARTITION_START_SECTOR * SECTOR
    return DiskLayout(
        fs_bytes=fs_bytes, disk_bytes=start + fs_bytes, partition_start=start, core_sectors=core_sectors
    )


def write_partition_table(disk: Path, layout: DiskLayout) -> None:
    """One bootable Linux partition at 1 MiB covering the filesystem; a fixed disk id for reproducibility."""
    require_tools("sfdisk")
    script = (
        "label: dos\nlabel-id: 0x53564d54\nunit: sectors\n"
        f"start={PARTITION_START_SECTOR}, size={layout.fs_bytes // SECTOR}, type=83, bootable\n"
    )
    subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "-q", str(disk)],
        input=script.encode(), check=True, capture_output=True,
    )  # fmt: skip


def copy_sparse(src: Path, dst: Path, offset: int) -> int:
    """Copy ``src`` into ``dst`` at ``offset`` reading only data extents; return bytes copied."""
    copied = 0
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        size = os.fstat(fin.fileno()).st_size
        position = 0
        while position < size:
            try:
                data_start = os.lseek(fin.fileno(), position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            hole_start = os.lseek(fin.fileno(), data_start, os.SEEK_HOLE)
            fin.seek(data_start)
            remaining = hole_start - data_start
            fout.seek(offset + data_start)
            while remaining:
                chunk = fin.read(min(COPY_CHUNK, remaining))
                if not chunk:
                    break
                fout.write(chunk)
                remaining -= len(chunk)
                copied += len(chunk)
            position = hole_start
    return copied


def boot_sector(boot_img: bytes, existing_mbr: bytes, core_sector: int = 1) -> bytes:
    """GRUB's boot.img fitted to this disk; keeps the signature and table of ``existing_mbr``."""
    if len(boot_img) != SECTOR or boot_img[510:512] != b"\x55\xaa":
        raise UserError("boot.img is not a 512-byte boot sector: reinstall grub-pc-bin in the image")
    code = bytearray(boot_img[:MBR_CODE_END])
    struct.pack_into("<Q", code, BOOT_KERNEL_SECTOR, core_sector)
    code[BOOT_DRIVE] = 0xFF
    code[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(code) + existing_mbr[MBR_CODE_END:510] + b"\x55\xaa"


def fit_core_image(core_img: bytes, core_sector: int = 1) -> bytes:
    """Point diskboot's blocklist (end of core.img's first sector) at the rest of core.img, right after it."""
    core = bytearray(core_img)
    sectors = -(-len(core) // SECTOR)
    core.extend(b"\0" * (sectors * SECTOR - len(core)))
    struct.pack_into("<QHH", core, SECTOR - BLOCKLIST_SIZE, core_sector + 1, sectors - 1, CORE_LOAD_SEGMENT)
    return bytes(core)


def install_boot_code(disk: Path, boot_img: bytes, core_img: bytes) -> None:
    core = fit_core_image(core_img)
    with open(disk, "r+b") as f:
        mbr = f.read(SECTOR)
        f.seek(0)
        f.write(boot_sector(boot_img, mbr))
        f.seek(SECTOR)
        f.write(core)


def assemble_disk(fs_image: Path, disk: Path, boot_img: bytes, core_img: bytes) -> DiskLayout:
    """Write a bootable raw MBR disk at ``disk`` (a new file) from an ext4 image and GRUB's boot code."""
    layout = plan_layout(fs_image.stat().st_size, len(core_img))
    with open(disk, "wb") as f:
        f.truncate(layout.disk_bytes)
    write_partition_table(disk, layout)
    copy_sparse(fs_image, disk, layout.partition_start)
    install_boot_code(disk, boot_img, core_img)
    return layout


def read_layout(disk: Path) -> dict[str, int]:
    """Parse the first MBR partition entry and GRUB fields (used by tests and the checker)."""
    with open(disk, "rb") as f:
        mbr = f.read(SECTOR)
        first_core = f.read(SECTOR)
    entry = mbr[0x1BE : 0x1BE + 16]
    start, count = struct.unpack_from("<II", entry, 8)
    (kernel_sector,) = struct.unpack_from("<Q", mbr, BOOT_KERNEL_SECTOR)
    bl_start, bl_len, bl_seg = struct.unpack_from("<QHH", first_core, SECTOR - BLOCKLIST_SIZE)
    return {
        "bootable": entry[0],
        "type": entry[4],
        "start_sector": start,
        "sectors": count,
        "kernel_sector": kernel_sector,
        "blocklist_start": bl_start,
        "blocklist_len": bl_len,
        "blocklist_segment": bl_seg,
        "signature": struct.unpack_from("<H", mbr, 510)[0],
    }
