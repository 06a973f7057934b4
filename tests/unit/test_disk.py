"""The disk assembly step: partition table, filesystem offset, GRUB boot code placement. No root needed."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from systemvm.build import disk
from systemvm.errors import UserError

GRUB_BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")


def fake_boot_img() -> bytes:
    img = bytearray(os.urandom(512))
    img[510:512] = b"\x55\xaa"
    return bytes(img)


def make_fs_image(path: Path, size: int, payload: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in payload.items():
            f.seek(offset)
            f.write(data)


def test_layout_puts_partition_at_one_mib_and_sizes_the_disk() -> None:
    layout = disk.plan_layout(64 << 20, 30_000)
    assert layout.partition_start == 1 << 20
    assert layout.disk_bytes == (1 << 20) + (64 << 20)
    assert layout.core_sectors == 59


def test_core_image_too_big_for_the_gap_is_rejected() -> None:
    with pytest.raises(UserError, match="embedding gap"):
        disk.plan_layout(64 << 20, 2047 * 512 + 1)


def test_filesystem_size_must_be_sector_multiple() -> None:
    with pytest.raises(UserError, match="multiple of 512"):
        disk.plan_layout(1000, 30_000)


def test_assembled_disk_has_table_offset_and_boot_code(tmp_path: Path) -> None:
    fs = tmp_path / "fs.img"
    payload = {0: b"FIRST-BLOCK", 5 << 20: b"MIDDLE" * 1000, (8 << 20) - 4: b"LAST"}
    make_fs_image(fs, 8 << 20, payload)
    boot = fake_boot_img()
    core = os.urandom(20_000)
    out = tmp_path / "disk.raw"
    layout = disk.assemble_disk(fs, out, boot, core)

    data = out.read_bytes()
    assert len(data) == layout.disk_bytes == (1 << 20) + (8 << 20)
    # the filesystem sits, byte for byte, at the partition offset
    assert data[layout.partition_start :] == fs.read_bytes()
    # the partition table as sfdisk wrote it
    parsed = disk.read_layout(out)
    assert parsed["start_sector"] == 2048
    assert parsed["sectors"] == (8 << 20) // 512
    assert parsed["type"] == 0x83 and parsed["bootable"] == 0x80
    assert parsed["signature"] == 0xAA55
    # boot.img: code kept, core.img location patched, drive check NOPed, table not overwritten
    assert data[:0x5C] == boot[:0x5C]
    assert parsed["kernel_sector"] == 1
    assert data[0x64] == 0xFF and data[0x66:0x68] == b"\x90\x90"
    # core.img from sector 1; its first sector's blocklist points at the rest, loaded at 0x820
    sectors = -(-len(core) // 512)
    assert data[512 : 512 * 2 - 12] == core[: 512 - 12]
    assert data[1024 : 512 + len(core)] == core[512:]
    assert (parsed["blocklist_start"], parsed["blocklist_len"], parsed["blocklist_segment"]) == (
        2,
        sectors - 1,
        0x820,
    )


def test_copy_is_sparse(tmp_path: Path) -> None:
    fs = tmp_path / "fs.img"
    make_fs_image(fs, 256 << 20, {0: b"x" * 4096, 200 << 20: b"y" * 4096})
    out = tmp_path / "disk.raw"
    disk.assemble_disk(fs, out, fake_boot_img(), os.urandom(4096))
    assert out.stat().st_blocks * 512 < 8 << 20  # holes stay holes


def test_fdisk_reads_our_table(tmp_path: Path) -> None:
    if shutil.which("sfdisk") is None:
        pytest.skip("sfdisk not installed")
    fs = tmp_path / "fs.img"
    make_fs_image(fs, 4 << 20, {})
    out = tmp_path / "disk.raw"
    disk.assemble_disk(fs, out, fake_boot_img(), os.urandom(2048))
    dump = subprocess.run(["sfdisk", "--dump", str(out)], capture_output=True, text=True, check=True).stdout
    assert "start=        2048, size=        8192, type=83, bootable" in dump
    assert "label-id: 0x53564d54" in dump


@pytest.mark.skipif(not GRUB_BOOT_IMG.exists(), reason="grub-pc-bin not installed")
def test_real_grub_boot_img_fields_are_where_we_patch_them() -> None:
    """Our offsets match GRUB's boot.img: the default kernel sector is 1 at 0x5c, boot drive 0xff at 0x64."""
    img = GRUB_BOOT_IMG.read_bytes()
    assert struct.unpack_from("<Q", img, disk.BOOT_KERNEL_SECTOR)[0] == 1
    assert img[disk.BOOT_DRIVE] == 0xFF
    assert img[disk.BOOT_DRIVE_CHECK] == 0xEB  # the short jmp grub-bios-setup replaces with NOPs
