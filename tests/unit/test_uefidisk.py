"""The arm64 flavour's disk: GPT, an EFI system partition holding GRUB's program at the removable-media path,
the root filesystem after it. Read back with our GPT reader, sgdisk, fdisk and mtools; no root needed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from systemvm.build import uefidisk
from systemvm.errors import UserError

EPOCH = 1_700_000_000
# Enough of a PE/COFF image for the ESP (the firmware is not asked to run it here)
PROGRAM = b"MZ" + bytes(range(256)) * 40


@pytest.fixture(autouse=True)
def _tools(need_tools) -> None:
    need_tools("sgdisk", "mkfs.fat", "mcopy", "mdir")


def make_fs_image(path: Path, size: int, payload: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in payload.items():
            f.seek(offset)
            f.write(data)


def test_layout_puts_the_esp_at_one_mib_and_the_root_after_it() -> None:
    layout = uefidisk.plan_gpt_layout(64 << 20)
    assert (layout.esp_start, layout.esp_bytes) == (1 << 20, 64 << 20)
    assert layout.partition_start == 65 << 20
    assert layout.disk_bytes == (65 << 20) + (64 << 20) + (1 << 20)  # the backup GPT at the end


def test_bad_sizes_are_one_line() -> None:
    with pytest.raises(UserError, match="multiple of 512"):
        uefidisk.plan_gpt_layout(1000)
    with pytest.raises(UserError, match="whole number of MiB"):
        uefidisk.plan_gpt_layout(1 << 20, esp_bytes=1000)


@pytest.fixture
def assembled(tmp_path: Path) -> tuple[Path, Path, uefidisk.GptLayout]:
    fs = tmp_path / "fs.img"
    make_fs_image(fs, 8 << 20, {0: b"FIRST-BLOCK", 5 << 20: b"MIDDLE" * 1000, (8 << 20) - 4: b"LAST"})
    disk = tmp_path / "disk.raw"
    layout = uefidisk.assemble_uefi_disk(fs, disk, PROGRAM, EPOCH)
    return fs, disk, layout


def test_gpt_has_the_esp_and_the_arm64_root(assembled) -> None:
    fs, disk, layout = assembled
    disk_guid, partitions = uefidisk.read_gpt(disk)
    assert disk_guid == uefidisk.DISK_GUID
    esp, root = partitions
    assert (esp.number, esp.type_guid, esp.guid, esp.name) == (
        1, uefidisk.ESP_TYPE, uefidisk.ESP_GUID, "EFI system partition",
    )  # fmt: skip
    assert (esp.start, esp.size) == (layout.esp_start, layout.esp_bytes)
    assert (root.number, root.type_guid, root.name) == (2, uefidisk.ROOT_TYPE, "cloudrootfs")
    assert (root.start, root.size) == (layout.partition_start, fs.stat().st_size)
    # the filesystem sits, byte for byte, in partition 2
    with open(disk, "rb") as f:
        f.seek(root.start)
        assert f.read(root.size) == fs.read_bytes()
    assert disk.stat().st_size == layout.disk_bytes


def test_sgdisk_and_fdisk_read_our_table(assembled) -> None:
    _, disk, _ = assembled
    verify = subprocess.run(["sgdisk", "--verify", str(disk)], capture_output=True, text=True)
    assert verify.returncode == 0 and "No problems found" in verify.stdout, verify.stdout + verify.stderr
    if shutil.which("fdisk"):
        listing = subprocess.run(
            ["fdisk", "-l", str(disk)], capture_output=True, text=True, check=True
        ).stdout
        assert "Disklabel type: gpt" in listing
        assert "EFI System" in listing and "Linux root (ARM-64)" in listing


def test_the_esp_holds_grub_at_the_removable_media_path(assembled) -> None:
    """UEFI firmware with an empty variable store boots EFI/BOOT/BOOTAA64.EFI: every new VM has one."""
    _, disk, layout = assembled
    listing = uefidisk.esp_listing(disk, layout.esp_start)
    assert "BOOTAA64 EFI" in listing and str(len(PROGRAM)) in listing.replace(" ", "")
    assert uefidisk.esp_file(disk, layout.esp_start) == PROGRAM
    with open(disk, "rb") as f:
        f.seek(layout.esp_start)
        boot_sector = f.read(512)
    assert boot_sector[82:90] == b"FAT32   " and boot_sector[510:512] == b"\x55\xaa"  # a FAT32 file system


def test_without_the_program_at_that_path_the_check_sees_it(tmp_path: Path, assembled) -> None:
    """The read-back fails when the program is elsewhere (as grub-install without --removable puts it)."""
    _, disk, layout = assembled
    env = {"MTOOLS_SKIP_CHECK": "1"}
    image = f"{disk}@@{layout.esp_start}"
    subprocess.run(["mmd", "-i", image, "::EFI/debian"], check=True, env=env)
    subprocess.run(["mmove", "-i", image, f"::{uefidisk.REMOVABLE_PATH}", "::EFI/debian/grubaa64.efi"],
                   check=True, env=env)  # fmt: skip
    with pytest.raises(UserError, match="EFI/BOOT/BOOTAA64.EFI is not in the EFI system partition"):
        uefidisk.esp_file(disk, layout.esp_start)


def test_the_same_inputs_give_the_same_disk(tmp_path: Path, assembled) -> None:
    fs, disk, _ = assembled
    again = tmp_path / "again.raw"
    uefidisk.assemble_uefi_disk(fs, again, PROGRAM, EPOCH)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (disk, again)]
    assert digest[0] == digest[1]


def test_the_disk_is_as_sparse_as_its_parts(tmp_path: Path) -> None:
    fs = tmp_path / "fs.img"
    make_fs_image(fs, 256 << 20, {0: b"x" * 4096, 200 << 20: b"y" * 4096})
    disk = tmp_path / "disk.raw"
    uefidisk.assemble_uefi_disk(fs, disk, PROGRAM, EPOCH)
    assert disk.stat().st_blocks * 512 < 8 << 20  # the empty FAT and the filesystem's holes stay holes


def test_a_program_that_is_not_pe_is_refused(tmp_path: Path) -> None:
    fs = tmp_path / "fs.img"
    make_fs_image(fs, 1 << 20, {})
    with pytest.raises(UserError, match="not a PE/COFF image"):
        uefidisk.assemble_uefi_disk(fs, tmp_path / "disk.raw", b"\x7fELF", EPOCH)


def test_a_damaged_table_is_caught_by_its_crc(assembled) -> None:
    _, disk, _ = assembled
    with open(disk, "r+b") as f:
        f.seek(2 * 512 + 56)  # the first entry's name
        f.write("x".encode("utf-16-le"))
    with pytest.raises(UserError, match="partition entries' CRC32 does not match"):
        uefidisk.read_gpt(disk)


def test_fixed_guids_are_uuid5s_and_distinct() -> None:
    guids = {uefidisk.DISK_GUID, uefidisk.ESP_GUID, uefidisk.ROOT_GUID}
    assert len(guids) == 3 and all(isinstance(g, uuid.UUID) and g.version == 5 for g in guids)
