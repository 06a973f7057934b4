"""Assemble a bootable UEFI disk (GPT, EFI system partition, root filesystem) as a file, without
device-mapper: the arm64 flavour's disk, as CloudStack's aarch64 template boots on Arm KVM hosts.

Like :mod:`systemvm.build.disk` for the x86 flavours, the disk is built around diskimage-builder's
partitionless root filesystem image, as a plain file, unprivileged:

1. the EFI system partition is a FAT image made as a file (``mkfs.fat -C``) holding GRUB's EFI program at the
   removable-media path ``EFI/BOOT/BOOTAA64.EFI`` (put there with mtools' ``mcopy``, no mount). Firmware
   boots that path when its variable store has no boot entry, which is the case for every new VM made from
   the template (CloudStack's own aarch64 build sets ``grub2/force_efi_extra_removable`` for the same
   reason: tools/appliance/systemvmtemplate/http/preseed_aarch64.cfg in apache/cloudstack);
2. ``sgdisk`` writes the GPT: partition 1 the ESP at 1 MiB, partition 2 the root filesystem;
3. both images are copied to their offsets reading only their data extents, so the disk is as sparse as
   they are.

The GRUB program is made by ``grub-mkimage`` inside the image chroot (elements/systemvm-base); it finds the
root filesystem by its label and reads ``/boot/grub/grub.cfg`` there. GUIDs, the FAT volume id and every
FAT timestamp are fixed (SOURCE_DATE_EPOCH), so the same inputs give the same disk bytes.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import tempfile
import uuid
import zlib
from pathlib import Path

from systemvm.build.disk import SECTOR, copy_sparse
from systemvm.errors import UserError
from systemvm.hosttools import require_tools

MIB = 1 << 20
ESP_START = 1 * MIB  # alignment; the GPT's 34 sectors fit before it
ESP_BYTES = 64 * MIB  # room for GRUB's program (about 1 MiB) many times over; FAT32 needs 65525 clusters
GPT_BACKUP_RESERVE = 1 * MIB  # the backup GPT (33 sectors) at the end, rounded to keep the end aligned
# The UEFI removable-media path for arm64 (UEFI specification, "Removable Media Boot Behavior").
REMOVABLE_PATH = "EFI/BOOT/BOOTAA64.EFI"
ESP_LABEL = "EFI"
# Partition type GUIDs: the EFI system partition (UEFI specification) and "Linux root (ARM-64)" of the
# Discoverable Partitions Specification (gdisk's 8305).
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
ROOT_TYPE = uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae")
# Fixed identities, for reproducible disks (every clone of a template shares them anyway, as it shares the
# root filesystem's UUID): UUID5s of the project's name.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "systemvm-template.cloudstack")
DISK_GUID = uuid.uuid5(_NAMESPACE, "disk")
ESP_GUID = uuid.uuid5(_NAMESPACE, "esp")
ROOT_GUID = uuid.uuid5(_NAMESPACE, "root")
ESP_NAME = "EFI system partition"
ROOT_NAME = "cloudrootfs"
GPT_SIGNATURE = b"EFI PART"


@dataclasses.dataclass(frozen=True)
class GptLayout:
    fs_bytes: int
    disk_bytes: int
    esp_start: int  # bytes
    esp_bytes: int
    partition_start: int  # the root filesystem, bytes


def plan_gpt_layout(fs_bytes: int, esp_bytes: int = ESP_BYTES) -> GptLayout:
    """ESP at 1 MiB, the root filesystem right after it (MiB-aligned), the backup GPT after that."""
    if fs_bytes <= 0 or fs_bytes % SECTOR:
        raise UserError(f"root filesystem size {fs_bytes} is not a positive multiple of {SECTOR}: rebuild it")
    if esp_bytes <= 0 or esp_bytes % MIB:
        raise UserError(f"EFI system partition size {esp_bytes} is not a whole number of MiB")
    root = ESP_START + esp_bytes
    return GptLayout(
        fs_bytes=fs_bytes,
        disk_bytes=root + fs_bytes + GPT_BACKUP_RESERVE,
        esp_start=ESP_START,
        esp_bytes=esp_bytes,
        partition_start=root,
    )


def make_esp(image: Path, efi_program: bytes, epoch: int, size: int = ESP_BYTES) -> None:
    """A FAT32 file system image of ``size`` bytes holding ``efi_program`` at :data:`REMOVABLE_PATH`.

    ``mkfs.fat --invariant`` fixes the volume id and the boot sector's values; mtools takes every time it
    writes from SOURCE_DATE_EPOCH, and ``mcopy -m`` the file's (set to ``epoch``).
    """
    require_tools("mkfs.fat", "mcopy")  # mmd comes with mcopy (mtools)
    if not efi_program.startswith(b"MZ"):
        raise UserError("GRUB's EFI program is not a PE/COFF image: see elements/systemvm-base in the log")
    image.unlink(missing_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}
    _run(["mkfs.fat", "-C", "-F", "32", "-n", ESP_LABEL, "--invariant", str(image), str(size // 1024)], env)
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / Path(REMOVABLE_PATH).name
        program.write_bytes(efi_program)
        os.utime(program, (epoch, epoch))
        parts = Path(REMOVABLE_PATH).parts
        directories = ["::" + "/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        _run(["mmd", "-i", str(image), *directories], env)
        _run(["mcopy", "-m", "-i", str(image), str(program), f"::{REMOVABLE_PATH}"], env)


def _run(args: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"{args[0]} failed ({detail[-1] if detail else f'exit {done.returncode}'})")
    return done.stdout


def write_gpt(disk: Path, layout: GptLayout) -> None:
    """The GPT: partition 1 the ESP, partition 2 the root filesystem, fixed GUIDs and names."""
    require_tools("sgdisk")
    esp_first = layout.esp_start // SECTOR
    root_first = layout.partition_start // SECTOR
    _run([
        "sgdisk", "--clear", f"--disk-guid={DISK_GUID}",
        f"--new=1:{esp_first}:{esp_first + layout.esp_bytes // SECTOR - 1}",
        f"--typecode=1:{ESP_TYPE}", f"--partition-guid=1:{ESP_GUID}", f"--change-name=1:{ESP_NAME}",
        f"--new=2:{root_first}:{root_first + layout.fs_bytes // SECTOR - 1}",
        f"--typecode=2:{ROOT_TYPE}", f"--partition-guid=2:{ROOT_GUID}", f"--change-name=2:{ROOT_NAME}",
        str(disk),
    ])  # fmt: skip


def assemble_uefi_disk(fs_image: Path, disk: Path, efi_program: bytes, epoch: int) -> GptLayout:
    """Write a bootable raw GPT disk at ``disk`` (a new file) from an ext4 image and GRUB's EFI program."""
    layout = plan_gpt_layout(fs_image.stat().st_size)
    with open(disk, "wb") as f:
        f.truncate(layout.disk_bytes)
    write_gpt(disk, layout)
    esp = disk.with_name(disk.name + ".esp")
    try:
        make_esp(esp, efi_program, epoch, layout.esp_bytes)
        copy_sparse(esp, disk, layout.esp_start)
    finally:
        esp.unlink(missing_ok=True)
    copy_sparse(fs_image, disk, layout.partition_start)
    return layout


# ---------------------------------------------------------------------------------------------- read back


@dataclasses.dataclass(frozen=True)
class GptPartition:
    number: int
    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str

    @property
    def start(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


def read_gpt(disk: Path) -> tuple[uuid.UUID, list[GptPartition]]:
    """The disk GUID and the used entries of the primary GPT, with both CRC32s checked (tests, checks)."""
    with open(disk, "rb") as f:
        f.seek(SECTOR)
        header = f.read(SECTOR)
        if header[:8] != GPT_SIGNATURE:
            raise UserError(f"{disk} has no GPT header at LBA 1")
        (header_size,) = struct.unpack_from("<I", header, 12)
        (header_crc,) = struct.unpack_from("<I", header, 16)
        check = bytearray(header[:header_size])
        check[16:20] = b"\0\0\0\0"
        if zlib.crc32(check) != header_crc:
            raise UserError(f"{disk}: the GPT header's CRC32 does not match")
        disk_guid = uuid.UUID(bytes_le=header[56:72])
        entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    if zlib.crc32(table) != entries_crc:
        raise UserError(f"{disk}: the GPT partition entries' CRC32 does not match")
    partitions = []
    for index in range(count):
        entry = table[index * entry_size : (index + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[0:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le").rstrip("\0")
        partitions.append(
            GptPartition(index + 1, type_guid, uuid.UUID(bytes_le=entry[16:32]), first, last, name)
        )
    return disk_guid, partitions


def esp_listing(disk: Path, esp_start: int, directory: str = "EFI/BOOT") -> str:
    """``mdir`` of ``directory`` in the FAT file system at byte ``esp_start`` of ``disk`` (no mount)."""
    require_tools("mdir")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return _run(["mdir", "-i", f"{disk}@@{esp_start}", f"::{directory}"], env)


def esp_file(disk: Path, esp_start: int, path: str = REMOVABLE_PATH) -> bytes:
    """A file's bytes from the FAT file system at byte ``esp_start`` of ``disk`` (mtools' ``mcopy``)."""
    require_tools("mcopy")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    done = subprocess.run(
        ["mcopy", "-n", "-i", f"{disk}@@{esp_start}", f"::{path}", "-"],
        capture_output=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip()
        raise UserError(f"{path} is not in the EFI system partition of {disk}: {reason}")
    return done.stdout
