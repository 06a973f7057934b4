"""export_flavour: all formats from one raw disk, deterministic, bad input refused before any output."""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.bench.export import bench_export
from systemvm.errors import UserError
from systemvm.export import publish, sbom
from systemvm.export.export import export_flavour, export_flavours, listing_lock, parse_formats
from systemvm.export.formats.vhd import check_vhd
from tests.unit.conftest import MIB, make_raw, pattern, read_with_libvhdi, read_with_qemu, same_disk
from tests.unit.manifests import ORIGINS_NEW, PACKAGES_NEW, make_manifest

EPOCH = 1_700_000_000
VERSION = "4.20.0"
FORMATS = ["qcow2", "vhd", "ova", "hyperv"]
REPO = Path(__file__).resolve().parents[2]


def small_disk(path: Path) -> Path:
    return make_raw(path, 9 * MIB + 512, [(0, pattern(MIB + 512, 1)), (5 * MIB, pattern(3000, 2))])


def version_dir(root: Path, flavour: str = "amd64") -> tuple[Path, Path]:
    out = root / VERSION
    out.mkdir(parents=True)
    raw = small_disk(naming.raw_disk(root, VERSION, flavour))
    return out, raw


def test_export_writes_every_format_listing_and_manifest(tmp_path, need_tools):
    need_tools("qemu-img", "bzip2")
    out, raw = version_dir(tmp_path)
    manifest = naming.manifest(tmp_path, VERSION, "amd64")
    manifest.write_text(json.dumps(make_manifest(PACKAGES_NEW, ORIGINS_NEW, version=VERSION)))
    results = export_flavour(raw, out, VERSION, "amd64", FORMATS, epoch=EPOCH, base_url="http://127.0.0.1/t")
    assert sorted(results) == sorted(FORMATS)
    for fmt, info in results.items():
        assert info["file"] == naming.export_name(VERSION, "amd64", fmt)
        assert (out / info["file"]).stat().st_size == info["size"]
    # the compressed disks read back to the raw disk
    plain_vhd = tmp_path / "x.vhd"
    plain_vhd.write_bytes(bz2.decompress((out / results["vhd"]["file"]).read_bytes()))
    check_vhd(plain_vhd)
    assert same_disk(raw, read_with_qemu(plain_vhd, "vpc", tmp_path / "v.raw"), 10 * MIB)
    assert same_disk(raw, read_with_libvhdi(plain_vhd, tmp_path / "l.raw"), 10 * MIB)
    plain_qcow2 = tmp_path / "x.qcow2"
    plain_qcow2.write_bytes(bz2.decompress((out / results["qcow2"]["file"]).read_bytes()))
    assert same_disk(raw, read_with_qemu(plain_qcow2, "qcow2", tmp_path / "q.raw"), raw.stat().st_size)
    # listings
    assert publish.verify_listing(out) == []
    # every published file is listed: artifacts, the manifest, the SBOM, metadata.ini (not the raw disk)
    sbom_file = out / "systemvmtemplate-4.20.0-x86_64.cdx.json"
    published = {info["file"] for info in results.values()} | {manifest.name, sbom_file.name, "metadata.ini"}
    assert set(publish.parse_checksums(out / "sha512sum.txt")) == published
    assert set(publish.parse_checksums(out / "md5sum.txt")) == published
    assert publish.unlisted_files(out) == []
    # metadata.ini names the hypervisor artifacts only, as before the other files were listed
    artifact_md5 = {info["file"]: info["md5"] for info in results.values()}
    assert (out / "metadata.ini").read_text() == publish.render_metadata(
        VERSION, artifact_md5, "http://127.0.0.1/t"
    )
    # the SBOM validates and holds each artifact's SHA-512
    assert sbom.check_sbom(sbom_file, json.loads(manifest.read_text())) == []
    meta = publish.parse_metadata(out / "metadata.ini")
    assert meta["kvm-x86_64"]["checksum"] == meta["kvm"]["checksum"] == results["qcow2"]["md5"]
    assert meta["xenserver"]["downloadurl"] == "http://127.0.0.1/t/" + results["vhd"]["file"]
    assert meta["hyperv"]["checksum"] == results["hyperv"]["md5"]
    assert meta["hyperv"]["downloadurl"] == "http://127.0.0.1/t/systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip"
    # manifest keeps its keys and records every artifact
    data = json.loads(manifest.read_text())
    assert data["flavour"] == "amd64" and data["package_records"]["libc6"]["source"] == "glibc"
    for fmt, info in results.items():
        assert data["artifacts"][info["file"]] == {
            "format": fmt,
            "size": info["size"],
            "sha512": info["sha512"],
        }
    # nothing temporary left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_export_is_deterministic(tmp_path, need_tools):
    need_tools("qemu-img", "bzip2")
    first, raw = version_dir(tmp_path / "one")
    second = tmp_path / "two" / VERSION
    second.mkdir(parents=True)
    a = export_flavour(raw, first, VERSION, "amd64", FORMATS, epoch=EPOCH)
    b = export_flavour(raw, second, VERSION, "amd64", FORMATS, epoch=EPOCH)
    assert {f: i["sha512"] for f, i in a.items()} == {f: i["sha512"] for f, i in b.items()}
    assert (first / "metadata.ini").read_text() == (second / "metadata.ini").read_text()


def test_flavours_merge_in_one_version_dir(tmp_path, need_tools):
    need_tools("qemu-img", "bzip2")
    out, raw64 = version_dir(tmp_path, "amd64")
    raw32 = small_disk(naming.raw_disk(tmp_path, VERSION, "i386"))
    export_flavour(raw64, out, VERSION, "amd64", ["vhd"], epoch=EPOCH)
    export_flavour(raw32, out, VERSION, "i386", ["vhd", "qcow2"], epoch=EPOCH)
    meta = publish.parse_metadata(out / "metadata.ini")
    assert set(meta) == {"default", "xenserver", "xenserver-i386", "kvm-i386"}
    assert len(publish.parse_checksums(out / "md5sum.txt")) == 3 + 1  # artifacts and metadata.ini


def test_flavours_exported_at_once_list_what_one_after_the_other_lists(tmp_path, need_tools):
    """Both flavours side by side (what ``invoke build`` does) end with the same files and lists as one
    flavour after the other: neither flavour's checksums or metadata.ini entries are lost."""
    need_tools("qemu-img", "bzip2")
    listings = []
    for name, run in (("apart", False), ("together", True)):
        out = tmp_path / name / VERSION
        out.mkdir(parents=True)
        raws = {f: small_disk(naming.raw_disk(tmp_path / name, VERSION, f)) for f in naming.FLAVOURS}
        if run:
            export_flavours(raws, out, VERSION, ["vhd", "qcow2"], epochs=dict.fromkeys(raws, EPOCH))
        else:
            for flavour, raw in raws.items():
                export_flavour(raw, out, VERSION, flavour, ["vhd", "qcow2"], epoch=EPOCH)
        listings.append([(out / f).read_text() for f in ("sha512sum.txt", "md5sum.txt", "metadata.ini")])
    assert listings[0] == listings[1]
    meta = publish.parse_metadata(tmp_path / "together" / VERSION / "metadata.ini")
    assert {"kvm-x86_64", "kvm-i386", "xenserver", "xenserver-i386"} <= set(meta)


def test_listing_waits_for_the_directory_lock(tmp_path, need_tools):
    """An export rewrites the shared lists only under the release directory's lock."""
    need_tools("qemu-img", "bzip2")
    out, raw = version_dir(tmp_path)
    done = threading.Event()
    with listing_lock(out):
        worker = threading.Thread(
            target=lambda: (export_flavour(raw, out, VERSION, "amd64", ["vhd"], epoch=EPOCH), done.set())
        )
        worker.start()
        deadline = time.monotonic() + 60
        while (
            not (out / naming.export_name(VERSION, "amd64", "vhd")).exists() and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(0.5)
        assert not done.is_set() and not (out / "metadata.ini").exists(), (
            "the listing did not wait for the lock"
        )
    worker.join(timeout=60)
    assert done.is_set() and (out / "metadata.ini").is_file()


def test_formats_parsing():
    assert parse_formats("ova,qcow2") == ["qcow2", "ova"]
    with pytest.raises(UserError, match="unknown export format 'vmdk'"):
        parse_formats("qcow2,vmdk")
    with pytest.raises(UserError, match="no export format"):
        parse_formats(" , ")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.raw", "does not exist"),
        (lambda d: _qcow2(d), "is a qcow2 file, not a raw disk"),
        (lambda d: _write(d / "odd.raw", b"x" * 1000), "not a non-empty multiple of 512"),
        (lambda d: _write(d / "empty.raw", b""), "not a non-empty multiple of 512"),
    ],
    ids=["missing", "qcow2", "odd-size", "empty"],
)
def test_bad_source_disk(tmp_path, make, message):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=message):
        export_flavour(make(tmp_path), out, VERSION, "amd64", ["vhd"], epoch=EPOCH)
    assert list(out.iterdir()) == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _qcow2(directory: Path) -> Path:
    path = directory / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "4M"], check=True)
    return path


def test_unknown_format_and_missing_output_dir(tmp_path):
    raw = small_disk(tmp_path / "d.raw")
    with pytest.raises(UserError, match="unknown export format 'iso'"):
        export_flavour(raw, tmp_path, VERSION, "amd64", ["iso"], epoch=EPOCH)
    with pytest.raises(UserError, match="output directory .* does not exist"):
        export_flavour(raw, tmp_path / "nope", VERSION, "amd64", ["vhd"], epoch=EPOCH)
    with pytest.raises(UserError, match="unknown flavour"):
        export_flavour(raw, tmp_path, VERSION, "armhf", ["vhd"], epoch=EPOCH)
    # CloudStack publishes aarch64 for KVM only: asking for another format alone is the user's error
    with pytest.raises(
        UserError, match=r"arm64 is published as qcow2 only, not vhd,ova: pass --formats qcow2"
    ):
        export_flavour(raw, tmp_path, VERSION, "arm64", ["vhd", "ova"], epoch=EPOCH)
    assert not list(tmp_path.glob("*aarch64*"))


@pytest.fixture
def small_mount(tmp_path):
    """A real tiny tmpfs (root only): read-only or 1 MiB, to test the output directory checks."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mounts = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.root
def test_unwritable_and_full_output_dir(tmp_path, small_mount):
    raw = small_disk(tmp_path / "d.raw")
    readonly = small_mount("ro,size=1m")
    with pytest.raises(UserError, match="is not writable"):
        export_flavour(raw, readonly, VERSION, "amd64", ["vhd"], epoch=EPOCH)
    tiny = small_mount("size=1m")
    with pytest.raises(UserError, match="not enough free space"):
        export_flavour(raw, tiny, VERSION, "amd64", ["vhd", "qcow2"], epoch=EPOCH)
    assert list(tiny.iterdir()) == []


def test_invoke_export_bad_input_is_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "invoke", "export", "--version", VERSION, "--formats", "qcow2,zip",
         "--artifacts", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: unknown export format 'zip': use one or more of qcow2,vhd,ova,hyperv"
    ]
    run = subprocess.run(
        [sys.executable, "-m", "invoke", "export", "--version", VERSION, "--flavour", "amd64",
         "--artifacts", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
    )  # fmt: skip
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "no build of version 4.20.0" in run.stderr and "run 'invoke build" in run.stderr


def test_bench_rows(tmp_path, need_tools):
    need_tools("qemu-img", "bzip2")
    raw = small_disk(tmp_path / "d.raw")
    rows = bench_export(raw, tmp_path / "bench")
    labels = [label for label, _ in rows]
    assert "qcow2 (qemu-img -c)" in labels and "vhd (our writer)" in labels
    assert "qcow2.bz2 with bzip2" in labels
    assert all(isinstance(value, str) and value for _, value in rows)
    assert not list((tmp_path / "bench").iterdir())
