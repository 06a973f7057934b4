"""The in-place read-back comparisons the real-export test uses can fail: a changed byte is seen."""

from __future__ import annotations

import os
from pathlib import Path

from systemvm.export.formats.vhd import write_dynamic_vhd
from tests.unit.conftest import libvhdi_reads_the_raw_disk, qemu_reads_the_raw_disk

MIB = 2**20


def small_raw(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(3 * MIB + 512)  # not a multiple of the VHD's 2 MiB blocks: the VHD rounds up
        f.seek(MIB)
        f.write(os.urandom(MIB))
    return path


def test_a_vhd_of_the_raw_disk_reads_as_it(tmp_path: Path) -> None:
    raw = small_raw(tmp_path / "disk.raw")
    vhd = tmp_path / "disk.vhd"
    write_dynamic_vhd(raw, vhd)
    assert qemu_reads_the_raw_disk(vhd, "vpc", raw) == ""
    assert libvhdi_reads_the_raw_disk(vhd, raw, 4 * MIB) == ""


def test_one_changed_byte_is_seen_by_both_readers(tmp_path: Path) -> None:
    raw = small_raw(tmp_path / "disk.raw")
    vhd = tmp_path / "disk.vhd"
    write_dynamic_vhd(raw, vhd)
    with open(raw, "r+b") as f:
        f.seek(MIB + 4096)
        byte = f.read(1)
        f.seek(MIB + 4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert f"mismatch at offset {MIB + 4096}" in qemu_reads_the_raw_disk(vhd, "vpc", raw)
    assert "offset 0" in libvhdi_reads_the_raw_disk(vhd, raw, 4 * MIB)
    assert "not" in libvhdi_reads_the_raw_disk(vhd, raw, 8 * MIB)  # the size is checked too
