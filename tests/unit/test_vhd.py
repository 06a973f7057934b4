"""Our dynamic VHD writer and checker, proven with qemu-img and libvhdi as independent readers."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import time
from pathlib import Path

import pytest

from systemvm.export.formats import vhd
from systemvm.export.formats.vhd import VhdError, check_vhd, vhd_virtual_size, write_dynamic_vhd
from tests.unit.conftest import read_with_libvhdi, read_with_qemu, same_disk

EPOCH = 1_700_000_000
MIB = 2**20


def rounded(size: int) -> int:
    return -(-size // (2 * MIB)) * (2 * MIB)


@pytest.fixture
def written(raw_disks, tmp_path):
    out = {}
    for name, raw in raw_disks.items():
        target = tmp_path / f"{name}.vhd"
        write_dynamic_vhd(raw, target, timestamp=EPOCH)
        out[name] = (raw, target)
    return out


EXPECTED_BLOCKS = {"sparse-odd": 4, "empty": 0, "odd-small": 2, "written-zeros": 1}


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_checker_accepts_ours_and_counts_blocks(written, name):
    raw, image = written[name]
    info = check_vhd(image)
    assert info["virtual_size"] == rounded(raw.stat().st_size) == vhd_virtual_size(image)
    assert info["allocated_blocks"] == EXPECTED_BLOCKS[name]
    assert info["batmap_full_blocks"] == EXPECTED_BLOCKS[name]
    assert info["blocks_in_order"] is True
    assert info["timestamp_unix"] == EPOCH
    assert info["creator"] == "tap 1.3"
    size = image.stat().st_size
    assert size == 1536 + 512 + 512 + 512 + EXPECTED_BLOCKS[name] * (512 + 2 * MIB) + 512


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_qemu_reads_back_bit_for_bit(written, name, tmp_path, need_tools):
    need_tools("qemu-img")
    raw, image = written[name]
    back = read_with_qemu(image, "vpc", tmp_path / f"{name}.qemu.raw")
    assert same_disk(raw, back, rounded(raw.stat().st_size))


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_libvhdi_reads_back_bit_for_bit(written, name, tmp_path, need_tools):
    need_tools("vhdiinfo")
    raw, image = written[name]
    back = read_with_libvhdi(image, tmp_path / f"{name}.vhdi.raw")
    assert same_disk(raw, back, rounded(raw.stat().st_size))
    info = subprocess.run(["vhdiinfo", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Dynamic" in info
    assert f"({rounded(raw.stat().st_size)} bytes)" in info


def test_layout_fields(written):
    _, image = written["sparse-odd"]
    data = image.read_bytes()
    footer = data[-512:]
    assert data[:512] == footer
    assert footer[:8] == b"conectix"
    assert struct.unpack(">I", footer[8:12])[0] == 2
    assert struct.unpack(">I", footer[12:16])[0] == 0x00010000
    assert struct.unpack(">Q", footer[16:24])[0] == 512
    assert footer[28:32] == b"tap\0"
    assert struct.unpack(">I", footer[32:36])[0] == 0x00010003
    assert struct.unpack(">I", footer[36:40])[0] == 0
    assert struct.unpack(">I", footer[60:64])[0] == 3
    assert footer[68:84] != bytes(16)
    assert footer[84:] == bytes(428)
    assert data[512:520] == b"cxsparse"
    bat_end = 1536 + 512  # 6 entries, one sector
    assert data[bat_end : bat_end + 8] == b"tdbatmap"
    offset, sectors, version = struct.unpack(">QII", data[bat_end + 8 : bat_end + 24])
    assert (offset, sectors, version) == (bat_end + 512, 1, 0x00010002)
    assert data[offset] == 0b10110100  # blocks 0, 2, 3 (6 MiB - 1 KiB straddles 2|3) and 5 (the tail)


def test_deterministic_and_content_derived_uuid(raw_disks, tmp_path):
    raw = raw_disks["sparse-odd"]
    a, b, c = tmp_path / "a.vhd", tmp_path / "b.vhd", tmp_path / "c.vhd"
    write_dynamic_vhd(raw, a, timestamp=EPOCH)
    write_dynamic_vhd(raw, b, timestamp=EPOCH)
    assert hashlib.sha512(a.read_bytes()).digest() == hashlib.sha512(b.read_bytes()).digest()
    write_dynamic_vhd(raw_disks["odd-small"], c, timestamp=EPOCH)
    assert check_vhd(a)["uuid"] != check_vhd(c)["uuid"]


def test_timestamp_from_source_date_epoch_and_never_future(raw_disks, tmp_path, monkeypatch):
    raw = raw_disks["empty"]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH + 5))
    write_dynamic_vhd(raw, tmp_path / "env.vhd")
    assert check_vhd(tmp_path / "env.vhd")["timestamp_unix"] == EPOCH + 5
    future = int(time.time()) + 10 * 86400
    before = int(time.time())
    write_dynamic_vhd(raw, tmp_path / "future.vhd", timestamp=future)
    stamp = check_vhd(tmp_path / "future.vhd")["timestamp_unix"]
    assert before <= stamp <= int(time.time())


def test_no_partial_file_on_missing_source(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        write_dynamic_vhd(tmp_path / "nope.raw", tmp_path / "out.vhd")
    assert list(tmp_path.iterdir()) == []


def test_qemu_written_vpc_is_rejected_for_its_creator(tmp_path, need_tools):
    need_tools("qemu-img")
    image = tmp_path / "qemu.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", str(image), "8M"], check=True)
    with pytest.raises(VhdError, match="wrong creator"):
        check_vhd(image)


# ------------------------------------------------------------------------------------- corruptions


def _set_footers(data: bytearray, mutate) -> None:
    """Apply ``mutate`` to both footers and fix their checksums (so only the intended rule breaks)."""
    for start in (0, len(data) - 512):
        footer = bytearray(data[start : start + 512])
        mutate(footer)
        footer[64:68] = b"\0\0\0\0"
        footer[64:68] = struct.pack(">I", vhd.ones_complement_checksum(bytes(footer)))
        data[start : start + 512] = footer


def _bat_entry(data: bytearray, index: int) -> int:
    return struct.unpack(">I", data[1536 + 4 * index : 1540 + 4 * index])[0]


def _set_bat(data: bytearray, index: int, value: int) -> None:
    data[1536 + 4 * index : 1540 + 4 * index] = struct.pack(">I", value)


def _fix_batmap(data: bytearray) -> None:
    header = 1536 + 512
    offset = struct.unpack(">Q", data[header + 8 : header + 16])[0]
    checksum = vhd.ones_complement_checksum(bytes(data[offset : offset + 512]))
    data[header + 24 : header + 28] = struct.pack(">I", checksum)


def corrupt_footer_checksum(data):
    data[-512 + 24] ^= 0x01  # timestamp byte, checksum left stale


def corrupt_copy_differs(data):
    copy = bytearray(data[:512])
    copy[68] ^= 0xFF
    copy[64:68] = b"\0\0\0\0"
    copy[64:68] = struct.pack(">I", vhd.ones_complement_checksum(bytes(copy)))
    data[:512] = copy


def corrupt_overlap(data):
    _set_bat(data, 2, _bat_entry(data, 0) + 8)


def corrupt_beyond_eof(data):
    _set_bat(data, 3, (len(data) // 512) - 2)


def corrupt_batmap_bit(data):
    header = 1536 + 512
    offset = struct.unpack(">Q", data[header + 8 : header + 16])[0]
    data[offset] |= 0x80 >> 1  # block 1 is unallocated
    _fix_batmap(data)


def corrupt_batmap_checksum(data):
    header = 1536 + 512
    offset = struct.unpack(">Q", data[header + 8 : header + 16])[0]
    data[offset] &= 0x7F  # clear block 0's bit, checksum left stale


def corrupt_future(data):
    future = int(time.time()) + 86400 - vhd.VHD_EPOCH
    _set_footers(data, lambda f: f.__setitem__(slice(24, 28), struct.pack(">I", future)))


def corrupt_cookie(data):
    data[-512:-504] = b"conectiX"


def corrupt_creator(data):
    _set_footers(data, lambda f: f.__setitem__(slice(28, 32), b"qemu"))


def corrupt_chs(data):
    _set_footers(data, lambda f: f.__setitem__(slice(56, 60), struct.pack(">I", (100 << 16) | (4 << 8) | 17)))


def corrupt_header_checksum(data):
    data[512 + 28] ^= 0x01  # max table entries, checksum stale


def corrupt_bitmap_clear(data):
    block = _bat_entry(data, 0) * 512
    data[block] = 0x7F  # first sector of block 0 marked unwritten though it holds data


CORRUPTIONS = [
    (corrupt_footer_checksum, "bad footer checksum"),
    (corrupt_copy_differs, "footer copies differ"),
    (corrupt_overlap, "overlapping blocks"),
    (corrupt_beyond_eof, "runs beyond EOF"),
    (corrupt_batmap_bit, "batmap bit set for unallocated block 1"),
    (corrupt_batmap_checksum, "batmap checksum"),
    (corrupt_future, "timestamp in the future"),
    (corrupt_cookie, "wrong cookie"),
    (corrupt_creator, "wrong creator"),
    (corrupt_chs, "CHS mismatch"),
    (corrupt_header_checksum, "dynamic header: bad checksum"),
    (corrupt_bitmap_clear, "batmap marks block 0 fully written"),
]


@pytest.mark.parametrize(("corrupt", "message"), CORRUPTIONS, ids=[c.__name__ for c, _ in CORRUPTIONS])
def test_checker_rejects_corruption(written, tmp_path, corrupt, message):
    _, image = written["sparse-odd"]
    data = bytearray(image.read_bytes())
    corrupt(data)
    bad = tmp_path / "bad.vhd"
    bad.write_bytes(bytes(data))
    with pytest.raises(VhdError, match=message):
        check_vhd(bad)


def test_checker_cli_reports_one_line(written, tmp_path):
    _, image = written["sparse-odd"]
    data = bytearray(image.read_bytes())
    corrupt_overlap(data)
    bad = tmp_path / "bad.vhd"
    bad.write_bytes(bytes(data))
    from systemvm.cli import main

    assert main(["vhd", "check", str(image)]) == 0
    assert main(["vhd", "check", str(bad)]) == 1


def test_chs_algorithm_known_values():
    """Worked by hand from the VHD specification (Appendix: CHS calculation), as blktap's vhd_chs does.

    qemu-img is no reference here: it grows the cylinder count until CHS covers the whole size.
    """
    assert vhd.chs_geometry(10 * MIB) == (301, 4, 17)  # 20480 sectors: 17 spt, 1204 c*h, 4 heads
    assert vhd.chs_geometry(2 * 1024 * MIB) == (4161, 16, 63)
    assert vhd.chs_geometry(3 * 1024 * MIB) == (6241, 16, 63)
    assert vhd.chs_geometry(127 * 1024 * MIB) == (65278, 16, 255)  # 266338304 // 255 // 16
    assert vhd.chs_geometry(65535 * 16 * 255 * 512 * 2) == (65535, 16, 255)  # capped


def test_checker_rejects_non_vhd(tmp_path):
    path = tmp_path / "x.vhd"
    path.write_bytes(bytes(1024))
    with pytest.raises(VhdError, match="wrong cookie"):
        check_vhd(path)
    with pytest.raises(VhdError, match="not a file"):
        check_vhd(tmp_path / "missing.vhd")


def test_sparse_reader_sees_only_data_blocks(raw_disks):
    import os

    raw: Path = raw_disks["sparse-odd"]
    with open(raw, "rb") as f:
        blocks = vhd.candidate_blocks(f.fileno(), raw.stat().st_size)
    assert set(blocks) >= {0, 2, 3, 5}
    assert len(blocks) <= 6
    assert os.stat(raw).st_blocks * 512 < raw.stat().st_size
