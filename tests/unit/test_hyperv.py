"""The Hyper-V artifact: our VHD writer with Hyper-V's creator fields, in a deterministic zip; read back by
qemu-img and libvhdi; listed in metadata.ini as CloudStack 4.20 reads it; seeded for ``-h hyperv``."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.export import publish
from systemvm.export.export import export_flavour
from systemvm.export.formats import hyperv, vhd
from systemvm.export.formats.vhd import HYPERV, XENSERVER, VhdError, check_vhd, write_dynamic_vhd
from systemvm.seed.install import SeedRequest, parse_properties, seed
from tests.unit.conftest import (
    MIB,
    libvhdi_reads_the_raw_disk,
    make_raw,
    pattern,
    qemu_reads_the_raw_disk,
    read_with_qemu,
    same_disk,
)

EPOCH = 1_700_000_000
VERSION = "4.20.0"
ENTRY = "systemvmtemplate-4.20.0-x86_64-hyperv.vhd"


def rounded(size: int) -> int:
    return -(-size // (2 * MIB)) * (2 * MIB)


@pytest.fixture
def hyperv_vhds(raw_disks, tmp_path):
    out = {}
    for name, raw in raw_disks.items():
        target = tmp_path / f"{name}.hyperv.vhd"
        write_dynamic_vhd(raw, target, timestamp=EPOCH, creator=HYPERV)
        out[name] = (raw, target)
    return out


# ------------------------------------------------------------------------------------------ the VHD


def test_footer_names_windows_as_hyper_v_writes_it(hyperv_vhds):
    _, image = hyperv_vhds["sparse-odd"]
    data = image.read_bytes()
    footer = data[-512:]
    assert data[:512] == footer
    assert footer[28:32] == b"win "  # creator application
    assert struct.unpack(">I", footer[32:36])[0] == 0x000A0000  # creator version 10.0
    assert footer[36:40] == b"Wi2k"  # creator host OS
    assert struct.unpack(">I", footer[60:64])[0] == 3  # dynamic
    assert (
        vhd.ones_complement_checksum(footer[:64] + bytes(4) + footer[68:])
        == struct.unpack(">I", footer[64:68])[0]
    )
    # no blktap batmap: the first block (its bitmap sector, all ones) follows the one-sector BAT
    bat_end = 1536 + 512
    assert b"tdbatmap" not in data[: bat_end + 512]
    first = struct.unpack(">I", data[1536:1540])[0]
    assert first * 512 == bat_end
    assert data[bat_end : bat_end + 512] == b"\xff" * 512
    info = check_vhd(image)
    assert info["writer"] == "hyperv" and info["creator"] == "win  10.0"
    assert info["batmap_full_blocks"] == 0 and info["allocated_blocks"] == 4
    assert image.stat().st_size == 1536 + 512 + 4 * (512 + 2 * MIB) + 512


def test_xenserver_file_is_unchanged_by_the_creator_parameter(raw_disks, tmp_path):
    raw = raw_disks["sparse-odd"]
    write_dynamic_vhd(raw, tmp_path / "default.vhd", timestamp=EPOCH)
    write_dynamic_vhd(raw, tmp_path / "xen.vhd", timestamp=EPOCH, creator=XENSERVER)
    assert (tmp_path / "default.vhd").read_bytes() == (tmp_path / "xen.vhd").read_bytes()
    assert check_vhd(tmp_path / "xen.vhd")["writer"] == "xenserver"


def test_checker_holds_each_writer_to_its_own_fields(hyperv_vhds, raw_disks, tmp_path):
    _, image = hyperv_vhds["sparse-odd"]
    with pytest.raises(VhdError, match="wrong creator b'win '.*expected b'tap"):
        check_vhd(image, creator=XENSERVER)
    write_dynamic_vhd(raw_disks["sparse-odd"], tmp_path / "xen.vhd", timestamp=EPOCH)
    with pytest.raises(VhdError, match="wrong creator b'tap"):
        check_vhd(tmp_path / "xen.vhd", creator=HYPERV)
    # a Hyper-V footer with blktap's host OS (0) is not what Hyper-V writes
    data = bytearray(image.read_bytes())
    for start in (0, len(data) - 512):
        footer = bytearray(data[start : start + 512])
        footer[36:40] = bytes(4)
        footer[64:68] = bytes(4)
        footer[64:68] = struct.pack(">I", vhd.ones_complement_checksum(bytes(footer)))
        data[start : start + 512] = footer
    bad = tmp_path / "bad-os.vhd"
    bad.write_bytes(bytes(data))
    with pytest.raises(VhdError, match="creator host OS 0x00000000, expected 0x5769326b as hyperv writes"):
        check_vhd(bad)


@pytest.mark.parametrize("name", ["sparse-odd", "empty", "odd-small", "written-zeros"])
def test_qemu_and_libvhdi_read_the_raw_disk(hyperv_vhds, name, tmp_path, need_tools):
    need_tools("qemu-img")
    raw, image = hyperv_vhds[name]
    back = read_with_qemu(image, "vpc", tmp_path / f"{name}.qemu.raw")
    assert same_disk(raw, back, rounded(raw.stat().st_size))
    assert qemu_reads_the_raw_disk(image, "vpc", raw) == ""
    assert libvhdi_reads_the_raw_disk(image, raw, rounded(raw.stat().st_size)) == ""


def test_qemu_takes_the_size_from_the_footer_for_win(tmp_path, need_tools):
    """qemu reads a 'win ' disk's size from the footer's current size (block/vpc.c), not from the CHS
    geometry, which rounds down: 10 MiB + 3 sectors is 12 MiB in the footer, less by CHS."""
    need_tools("qemu-img")
    raw = make_raw(tmp_path / "r.raw", 10 * MIB + 3 * 512, [(0, pattern(4096))])
    image = tmp_path / "r.vhd"
    write_dynamic_vhd(raw, image, timestamp=EPOCH, creator=HYPERV)
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "vpc", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f'"virtual-size": {12 * MIB}' in info


# ------------------------------------------------------------------------------------------ the zip


def _zip(raw: Path, out: Path, work: Path, epoch: int = EPOCH) -> Path:
    work.mkdir(exist_ok=True)
    hyperv.write_hyperv_zip(raw, out, work, entry=ENTRY, epoch=epoch).unlink()
    return out


def test_zip_holds_one_deflated_entry_with_fixed_stamp_and_mode(raw_disks, tmp_path):
    archive = _zip(raw_disks["sparse-odd"], tmp_path / "a.zip", tmp_path / "w")
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        (info,) = zf.infolist()
        assert info.filename == ENTRY
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.date_time == (2023, 11, 14, 22, 13, 20)  # 1_700_000_000 in UTC
        assert info.external_attr >> 16 == 0o100644 and info.create_system == 3
        assert info.extra == b"" and zf.comment == b""
        assert info.flag_bits & 0x08 == 0  # sizes in the local header: streamable
    # the entry is the Hyper-V VHD our writer makes
    write_dynamic_vhd(raw_disks["sparse-odd"], tmp_path / "direct.vhd", timestamp=EPOCH, creator=HYPERV)
    plain = hyperv.unzip_vhd(archive, tmp_path / "x.vhd")
    assert plain.read_bytes() == (tmp_path / "direct.vhd").read_bytes()


def test_zip_is_byte_identical_across_runs_and_follows_the_epoch(raw_disks, tmp_path):
    raw = raw_disks["sparse-odd"]
    a = _zip(raw, tmp_path / "a.zip", tmp_path / "w1")
    b = _zip(raw, tmp_path / "b.zip", tmp_path / "w2")
    assert hashlib.sha512(a.read_bytes()).digest() == hashlib.sha512(b.read_bytes()).digest()
    c = _zip(raw, tmp_path / "c.zip", tmp_path / "w3", epoch=EPOCH + 86400)
    assert a.read_bytes() != c.read_bytes()
    with zipfile.ZipFile(c) as zf:
        assert zf.infolist()[0].date_time == (2023, 11, 15, 22, 13, 20)


def test_zip_time_before_1980_is_clamped():
    assert hyperv.zip_date_time(0) == (1980, 1, 1, 0, 0, 0)
    assert hyperv.zip_date_time(EPOCH + 1) == (2023, 11, 14, 22, 13, 20)  # 2-second resolution


def test_unzip_refuses_other_archives(tmp_path):
    other = tmp_path / "two.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("a.vhd", b"x")
        zf.writestr("b.vhd", b"y")
    with pytest.raises(Exception, match="not one .vhd"):
        hyperv.unzip_vhd(other, tmp_path / "out.vhd")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="not a readable zip"):
        hyperv.unzip_vhd(tmp_path / "junk.zip", tmp_path / "out.vhd")


# ---------------------------------------------------------------------------- export, metadata, seeding


@pytest.fixture
def exported(tmp_path, need_tools):
    need_tools("qemu-img")
    out = tmp_path / VERSION
    out.mkdir()
    raw = make_raw(naming.raw_disk(tmp_path, VERSION, "amd64"), 9 * MIB + 512, [(0, pattern(MIB + 512))])
    raw32 = make_raw(naming.raw_disk(tmp_path, VERSION, "i386"), 5 * MIB, [(MIB, pattern(4096, 7))])
    results = export_flavour(
        raw, out, VERSION, "amd64", ["hyperv"], epoch=EPOCH, base_url="https://d.example/4.20"
    )
    export_flavour(raw32, out, VERSION, "i386", ["hyperv"], epoch=EPOCH, base_url="https://d.example/4.20")
    return out, raw, results["hyperv"]


def test_export_names_lists_and_registers_the_zip(exported, tmp_path):
    out, raw, info = exported
    assert info["file"] == "systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip"
    zip_md5 = hashlib.md5((out / info["file"]).read_bytes()).hexdigest()
    assert publish.parse_checksums(out / "md5sum.txt")[info["file"]] == zip_md5 == info["md5"]
    assert publish.parse_checksums(out / "sha512sum.txt")[info["file"]] == info["sha512"]
    assert publish.verify_listing(out) == [] and publish.unlisted_files(out) == []
    meta = publish.parse_metadata(out / "metadata.ini")
    assert set(meta) == {"default", "hyperv", "hyperv-i386"}
    assert meta["hyperv"] == {
        "templatename": "systemvm-hyperv-4.20.0-x86_64",
        "checksum": zip_md5,
        "downloadurl": "https://d.example/4.20/systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip",
        "filename": "systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip",
        "arch": "x86_64",
        "guestos": "Debian GNU/Linux 12 (64-bit)",
    }
    assert meta["hyperv-i386"]["filename"] == "systemvmtemplate-4.20.0-i386-hyperv.vhd.zip"
    # the zip's VHD is the raw disk, by qemu and by libvhdi
    plain = hyperv.unzip_vhd(out / info["file"], tmp_path / "x.vhd")
    assert check_vhd(plain, creator=HYPERV)["writer"] == "hyperv"
    assert qemu_reads_the_raw_disk(plain, "vpc", raw) == ""
    assert libvhdi_reads_the_raw_disk(plain, raw, 10 * MIB) == ""
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_sections_follow_templateconfig_order():
    md5 = {
        naming.export_name(VERSION, "amd64", f): f"{i:032x}"
        for i, f in enumerate(("qcow2", "vhd", "ova", "hyperv"))
    }
    text = publish.render_metadata(VERSION, md5, "https://d.example/4.20")
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == ["[default]", "[kvm]", "[kvm-x86_64]", "[vmware]", "[xenserver]", "[hyperv]", "[lxc]"]


def test_seed_hyperv_keeps_cloudstacks_layout(exported, tmp_path):
    out, raw, info = exported
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = seed(
        SeedRequest(mount=mount, hypervisor="hyperv", file=str(out / info["file"]), template_id=9,
                    use_db=False, progress=False)
    )  # fmt: skip
    assert result.directory == mount / "template" / "tmpl" / "1" / "9"
    assert result.filename.endswith(".vhd")  # createtmplt.sh unzips: secondary storage holds the VHD
    assert {p.name for p in result.directory.iterdir()} == {result.filename, "template.properties"}
    props = parse_properties((result.directory / "template.properties").read_text())
    assert props["vhd"] == "true" and props["vhd.filename"] == result.filename
    assert props["virtualsize"] == str(10 * MIB)
    assert props["checksum"] == info["sha512"]  # verified against sha512sum.txt beside the zip
    stored = result.directory / result.filename
    assert check_vhd(stored, creator=HYPERV)["writer"] == "hyperv"
    assert qemu_reads_the_raw_disk(stored, "vpc", raw) == ""
