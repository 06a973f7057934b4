"""Export real built raw disks in every format and prove each with every reader we have.

Set SYSTEMVM_RAW_DISKS to colon-separated paths of built raw disks, e.g.
``artifacts/4.20.0/systemvmtemplate-4.20.0-x86_64.raw:artifacts/4.20.0/systemvmtemplate-4.20.0-i386.raw``.
The test is skipped only when the variable is unset; a listed path that is missing fails it.
"""

from __future__ import annotations

import bz2
import concurrent.futures
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.export import detect, publish, sbom
from systemvm.export.decompress import unpacked_copy
from systemvm.export.formats import ova
from systemvm.export.formats.hyperv import unzip_vhd
from systemvm.export.formats.qcow2 import write_qcow2
from systemvm.export.formats.vhd import HYPERV, check_vhd, write_dynamic_vhd
from tests.unit.conftest import libvhdi_reads_the_raw_disk, qemu_reads_the_raw_disk

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


def built_exports(raw: Path) -> tuple[Path, str, str, dict[str, Path]]:
    """The exports ``invoke build`` wrote next to ``raw`` (one per format the flavour is published in)."""
    version, flavour = flavour_of(raw)
    formats = naming.published_formats(flavour, ["qcow2", "vhd", "ova", "hyperv"])
    files = {fmt: raw.parent / naming.export_name(version, flavour, fmt) for fmt in formats}
    for path in files.values():
        assert path.is_file(), f"{path} is missing: run invoke build (it exports by default)"
    return raw.parent, version, flavour, files


def read_back(raw: Path, tmp_path: Path) -> None:
    """The build's own exports of ``raw``, read back by every independent reader, equal the raw disk
    (AssertionError otherwise)."""
    assert raw.is_file(), f"{raw} listed in SYSTEMVM_RAW_DISKS does not exist"
    out, _version, _flavour, files = built_exports(raw)
    size = raw.stat().st_size
    vhd_size = -(-size // 2**21) * 2**21

    if "vhd" in files:  # not for arm64, published as a KVM qcow2 only
        vhd = decompress(files["vhd"], tmp_path / "disk.vhd")
        info = check_vhd(vhd)
        assert info["virtual_size"] == vhd_size
        assert qemu_reads_the_raw_disk(vhd, "vpc", raw) == ""
        assert libvhdi_reads_the_raw_disk(vhd, raw, vhd_size) == ""
        vhdiinfo = subprocess.run(["vhdiinfo", str(vhd)], capture_output=True, text=True, check=True).stdout
        assert f"({vhd_size} bytes)" in vhdiinfo
        vhd.unlink()

    if (
        "hyperv" in files
    ):  # Hyper-V: the zip's one VHD, with Hyper-V's creator fields, read by qemu-img and libvhdi
        hyperv = unzip_vhd(files["hyperv"], tmp_path / "hyperv.vhd")
        info = check_vhd(hyperv, check_data=False, creator=HYPERV)
        assert info["virtual_size"] == vhd_size and info["writer"] == "hyperv"
        assert qemu_reads_the_raw_disk(hyperv, "vpc", raw) == ""
        assert libvhdi_reads_the_raw_disk(hyperv, raw, vhd_size) == ""
        hyperv.unlink()

    qcow2 = decompress(files["qcow2"], tmp_path / "disk.qcow2")
    info = subprocess.run(["qemu-img", "info", str(qcow2)], capture_output=True, text=True, check=True).stdout
    assert "compat: 0.10" in info
    assert qemu_reads_the_raw_disk(qcow2, "qcow2", raw) == ""
    qcow2.unlink()

    if "ova" in files:
        ova.check_ova(files["ova"])
        assert ova.ova_virtual_size(files["ova"]) == size

    assert publish.verify_listing(out) == []
    assert publish.unlisted_files(out) == []  # manifests and SBOMs too
    manifest = json.loads(naming.manifest(out.parent, _version, _flavour).read_text())
    assert sbom.check_sbom(out / sbom.sbom_name(_version, _flavour), manifest) == []


@pytest.fixture(scope="module")
def read_backs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, Future[None]]]:
    """Every flavour's read-back, all started at once: each is mostly one thread at a time (bz2, one
    qemu-img or libvhdi reading), so two flavours side by side keep both cores busy."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        yield {raw: pool.submit(read_back, raw, tmp_path_factory.mktemp(raw.stem)) for raw in RAW_DISKS}


@pytest.mark.parametrize("raw", RAW_DISKS, ids=[p.name for p in RAW_DISKS])
def test_real_disk_exports_read_back(raw: Path, read_backs: dict[Path, Future[None]]) -> None:
    """The build's own exports, read back by every independent reader, equal the raw disk."""
    read_backs[raw].result()


def _same_file(a: Path, b: Path) -> bool:
    return publish.file_digests(a)["sha512"] == publish.file_digests(b)["sha512"]


def _behind(artifact: Path, kind: str) -> Path:
    """The disk the build compressed into ``artifact``: the export left it in the cache of unpacked
    artifacts (made again from ``artifact`` when that entry was pruned)."""
    return unpacked_copy(artifact, kind, lambda p: detect.kind_of(p) == kind, f"{artifact} holds no {kind}")


def test_second_export_is_byte_identical(tmp_path):
    """Determinism: exporting the same raw disk again with the same SOURCE_DATE_EPOCH gives the same files.

    Each format's writer runs again on the real disk: the qcow2 and the VHD equal the disks the build
    compressed into its .bz2 files, the OVA and the SBOM equal the published files. Compressing again is
    left out: lbzip2's output for the same input is a unit test on real lbzip2
    (tests/unit/test_publish.py), and it cost CI two cores for 80 s here; so is the Hyper-V zip
    (tests/unit/test_hyperv.py), whose VHD writer is the VHD's.
    """
    raw = RAW_DISKS[0]
    out, version, flavour, files = built_exports(raw)
    manifest_path = naming.manifest(out.parent, version, flavour)
    manifest = json.loads(manifest_path.read_text())
    epoch = manifest["source_date_epoch"]
    published = publish.parse_checksums(out / "sha512sum.txt")

    write_qcow2(raw, tmp_path / "again.qcow2")
    assert _same_file(tmp_path / "again.qcow2", _behind(files["qcow2"], "qcow2")), "qcow2"
    if "vhd" in files:
        write_dynamic_vhd(raw, tmp_path / "again.vhd", timestamp=epoch)
        assert _same_file(tmp_path / "again.vhd", _behind(files["vhd"], "vhd")), "vhd"
    if "ova" in files:
        again = tmp_path / files["ova"].name
        ova.write_ova(raw, again, name=naming.stem(version, flavour), flavour=flavour, epoch=epoch)
        assert publish.file_digests(again)["sha512"] == published[files["ova"].name], "ova"
    name = sbom.sbom_name(version, flavour)
    assert sbom.write_sbom(tmp_path, manifest_path, epoch).read_bytes() == (out / name).read_bytes()
    assert manifest["artifacts"], "the build recorded no artifacts in its manifest"
