"""One image-kind detector and one bz2 decompressor for every phase."""

from __future__ import annotations

import bz2
from pathlib import Path

import pytest

from systemvm.boot.hypervisors.xenserver import artifact_kind
from systemvm.errors import UserError
from systemvm.export import detect
from systemvm.export.decompress import decompress_bz2
from systemvm.seed.install import image_kind
from systemvm.seed.stream import compression_of


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"QFI\xfb\x00\x00\x00\x03", "qcow2"),
        (b"conectix", "vhd"),
        (b"KDMV", "vmdk"),
        (b"BZh91AY", "bz2"),
        (b"\x1f\x8b\x08", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"PK\x03\x04", "zip"),
        (b"\0" * 257 + b"ustar\x0000", "ova"),
        (b"\0" * 512, "raw"),
    ],
)
def test_kind_of_bytes(head: bytes, kind: str) -> None:
    assert detect.kind_of_bytes(head) == kind


def test_fixed_vhd_is_found_by_its_footer(tmp_path: Path) -> None:
    disk = tmp_path / "fixed.vhd"
    disk.write_bytes(b"\0" * 4096 + b"conectix" + b"\0" * 504)
    assert detect.kind_of(disk) == "vhd"
    assert image_kind(disk) == "vhd"
    assert artifact_kind(disk) == "vhd"


def test_callers_agree(tmp_path: Path) -> None:
    packed = tmp_path / "x.vhd.bz2"
    packed.write_bytes(bz2.compress(b"\0" * 4096))
    assert artifact_kind(packed) == "vhd.bz2"
    assert image_kind(packed) == "raw"
    assert compression_of(packed.read_bytes()[:8]) == "bz2"
    assert compression_of(b"\0" * 8) == "none"
    other = tmp_path / "other"
    other.write_bytes(b"QFI\xfb" + b"\0" * 1020)
    with pytest.raises(UserError):
        artifact_kind(other)


def test_decompress_bz2(tmp_path: Path) -> None:
    data = b"systemvm " * 10000
    packed = tmp_path / "a.bz2"
    packed.write_bytes(bz2.compress(data))
    decompress_bz2(packed, tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == data
