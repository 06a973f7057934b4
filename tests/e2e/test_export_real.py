"""Export real built raw disks in every format and prove each with every reader we have.

Set SYSTEMVM_RAW_DISKS to colon-separated paths of built raw disks, e.g.
``artifacts/4.20.0/systemvmtemplate-4.20.0-x86_64.raw:artifacts/4.20.0/systemvmtemplate-4.20.0-i386.raw``.
The test is skipped only when the variable is unset; a listed path that is missing fails it.
"""

from __future__ import annotations

import bz2
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from systemvm import naming, publish
from systemvm.export import export_flavour
from systemvm.formats.vhd import check_vhd
from tests.unit.conftest import read_with_libvhdi, read_with_qemu, same_disk

EPOCH = 1_700_000_000
HAVE_OVA = importlib.util.find_spec("systemvm.formats.ova") is not None
RAW_DISKS = [Path(p) for p in os.environ.get("SYSTEMVM_RAW_DISKS", "").split(":") if p]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not RAW_DISKS, reason="SYSTEMVM_RAW_DISKS is not set (colon-separated raw disk paths)"
    ),
]


def flavour_of(raw: Path) -> tuple[str, str]:
    """(version, flavour) from a name like systemvmtemplate-4.20.0-x86_64.raw."""
    stem = raw.name.removesuffix(".raw")
    _, version, arch = stem.split("-", 2)
    return version, {v: k for k, v in naming.ARCH_OF.items()}[arch]


def decompress(src: Path, dst: Path) -> Path:
    with bz2.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 4 * 2**20)
    return dst


@pytest.mark.parametrize("raw", RAW_DISKS, ids=[p.name for p in RAW_DISKS])
def test_real_disk_exports_read_back(raw, tmp_path):
    assert raw.is_file(), f"{raw} listed in SYSTEMVM_RAW_DISKS does not exist"
    version, flavour = flavour_of(raw)
    out = tmp_path / version
    out.mkdir()
    formats = ["qcow2", "vhd"] + (["ova"] if HAVE_OVA else [])
    results = export_flavour(raw, out, version, flavour, formats, epoch=EPOCH)
    size = raw.stat().st_size
    vhd_size = -(-size // 2**21) * 2**21

    vhd = decompress(out / results["vhd"]["file"], tmp_path / "disk.vhd")
    info = check_vhd(vhd)
    assert info["virtual_size"] == vhd_size
    back = read_with_qemu(vhd, "vpc", tmp_path / "back.raw")
    assert same_disk(raw, back, vhd_size)
    back.unlink()
    back = read_with_libvhdi(vhd, tmp_path / "back.raw")
    assert same_disk(raw, back, vhd_size)
    back.unlink()
    vhdiinfo = subprocess.run(["vhdiinfo", str(vhd)], capture_output=True, text=True, check=True).stdout
    assert f"({vhd_size} bytes)" in vhdiinfo
    vhd.unlink()

    qcow2 = decompress(out / results["qcow2"]["file"], tmp_path / "disk.qcow2")
    back = read_with_qemu(qcow2, "qcow2", tmp_path / "back.raw")
    assert same_disk(raw, back, size)
    back.unlink()
    qcow2.unlink()

    if HAVE_OVA:
        from systemvm.formats import ova

        ova.check_ova(out / results["ova"]["file"])
        assert ova.ova_virtual_size(out / results["ova"]["file"]) == size

    assert publish.verify_listing(out) == []
    # determinism: a second export of the same disk gives the same bytes
    again = tmp_path / "again" / version
    again.mkdir(parents=True)
    second = export_flavour(raw, again, version, flavour, formats, epoch=EPOCH)
    assert {f: i["sha512"] for f, i in second.items()} == {f: i["sha512"] for f, i in results.items()}
