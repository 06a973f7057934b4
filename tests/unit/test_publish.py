"""bzip2 choice, checksum lists and metadata.ini as CloudStack's templateConfig.sh writes them."""

from __future__ import annotations

import bz2
import hashlib
import subprocess

import pytest

from systemvm import naming
from systemvm.defaults import DOWNLOAD_BASE_URL
from systemvm.errors import UserError
from systemvm.export import publish
from tests.unit.conftest import pattern


def test_lbzip2_is_deterministic_and_readable_by_bunzip2_and_python(tmp_path, need_tools):
    need_tools("lbzip2", "bunzip2")
    src = tmp_path / "data"
    src.write_bytes(pattern(2 * 2**20) + bytes(3 * 2**20) + pattern(2**20, 9))
    assert publish.lbzip2_usable() is True
    outputs = []
    for threads in ("1", "2"):
        run = subprocess.run(["lbzip2", "-9", "-n", threads, "-c", str(src)], capture_output=True, check=True)
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]
    publish.compress_bz2(src, tmp_path / "a.bz2")
    assert (tmp_path / "a.bz2").read_bytes() == outputs[0]
    plain = subprocess.run(["bunzip2", "-c", str(tmp_path / "a.bz2")], capture_output=True, check=True).stdout
    assert plain == src.read_bytes()
    assert bz2.decompress((tmp_path / "a.bz2").read_bytes()) == src.read_bytes()
    publish.compress_bz2(src, tmp_path / "p.bz2", parallel=False)
    assert bz2.decompress((tmp_path / "p.bz2").read_bytes()) == src.read_bytes()


def _fake_artifacts(directory, version="4.20.0"):
    names = []
    for flavour in naming.FLAVOURS:
        for fmt in naming.published_formats(flavour, ("qcow2", "vhd", "ova")):
            name = naming.export_name(version, flavour, fmt)
            (directory / name).write_bytes(f"{flavour}-{fmt}".encode())
            names.append(name)
    return names


def test_checksum_lists_merge_sorted_and_verify_with_coreutils(tmp_path):
    names = _fake_artifacts(tmp_path)
    first = {n: publish.file_digests(tmp_path / n) for n in names[:3]}
    second = {n: publish.file_digests(tmp_path / n) for n in names[3:]}
    publish.update_checksums(tmp_path, first)
    publish.update_checksums(tmp_path, second)
    entries = publish.parse_checksums(tmp_path / "sha512sum.txt")
    assert list(entries) == sorted(names)
    for name in names:
        assert entries[name] == hashlib.sha512((tmp_path / name).read_bytes()).hexdigest()
    for tool, listing in (("sha512sum", "sha512sum.txt"), ("md5sum", "md5sum.txt")):
        run = subprocess.run([tool, "-c", "--strict", listing], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    # a vanished file drops out of the lists on the next refresh
    (tmp_path / names[0]).unlink()
    publish.update_checksums(tmp_path, {})
    assert names[0] not in publish.parse_checksums(tmp_path / "md5sum.txt")
    assert publish.verify_listing(tmp_path) == []


def test_metadata_ini_round_trip(tmp_path):
    names = _fake_artifacts(tmp_path)
    publish.update_checksums(tmp_path, {n: publish.file_digests(tmp_path / n) for n in names})
    publish.write_metadata(tmp_path, "4.20.0", "http://127.0.0.1:8080/systemvm/4.20/")
    text = (tmp_path / "metadata.ini").read_text()
    assert text.startswith("\n[default]\nversion = 4.20.0\n")
    meta = publish.parse_metadata(tmp_path / "metadata.ini")
    sha = publish.parse_checksums(tmp_path / "md5sum.txt")  # CloudStack 4.20 compares MD5s
    assert list(meta) == [
        "default", "kvm", "kvm-x86_64", "vmware", "xenserver", "lxc",
        "kvm-i386", "vmware-i386", "xenserver-i386", "kvm-aarch64",
    ]  # fmt: skip
    assert meta["kvm"] == meta["kvm-x86_64"]  # 4.20.0 reads [kvm], 4.20.1+ [kvm-x86_64]
    assert meta["default"] == {
        "version": "4.20.0",
        "downloadrepository": "http://127.0.0.1:8080/systemvm/4.20/",
    }
    kvm = meta["kvm-x86_64"]
    assert kvm["templatename"] == "systemvm-kvm-4.20.0-x86_64"
    assert kvm["filename"] == "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"
    assert kvm["downloadurl"] == "http://127.0.0.1:8080/systemvm/4.20/" + kvm["filename"]
    assert kvm["checksum"] == sha[kvm["filename"]]
    assert kvm["arch"] == "x86_64"
    assert kvm["guestos"] == "Debian GNU/Linux 12 (64-bit)"
    assert meta["xenserver"]["guestos"] == "Other Linux (64-bit)"
    assert meta["vmware"]["filename"].endswith("-x86_64-vmware.ova")
    assert meta["xenserver-i386"]["filename"] == "systemvmtemplate-4.20.0-i386-xen.vhd.bz2"
    assert meta["xenserver-i386"]["guestos"] == "Other Linux (32-bit)"
    assert meta["kvm-i386"]["guestos"] == "Debian GNU/Linux 12 (32-bit)"
    # as a 4.20.2 management server's metadata.ini names CloudStack's aarch64 template (PR 11291)
    assert meta["kvm-aarch64"] == {
        "templatename": "systemvm-kvm-4.20.0-aarch64",
        "checksum": sha["systemvmtemplate-4.20.0-aarch64-kvm.qcow2.bz2"],
        "downloadurl": "http://127.0.0.1:8080/systemvm/4.20/systemvmtemplate-4.20.0-aarch64-kvm.qcow2.bz2",
        "filename": "systemvmtemplate-4.20.0-aarch64-kvm.qcow2.bz2",
        "arch": "aarch64",
        "guestos": "Debian GNU/Linux 12 (64-bit)",
    }
    for section, values in meta.items():
        if section != "default":
            assert values["checksum"] == sha[values["filename"]]


def test_metadata_lists_only_present_artifacts(tmp_path):
    name = naming.export_name("4.20.0", "amd64", "vhd")
    (tmp_path / name).write_bytes(b"x")
    publish.update_checksums(tmp_path, {name: publish.file_digests(tmp_path / name)})
    publish.write_metadata(tmp_path, "4.20.0", publish.default_base_url("4.20.0"))
    meta = publish.parse_metadata(tmp_path / "metadata.ini")
    assert list(meta) == ["default", "xenserver"]
    assert meta["xenserver"]["downloadurl"] == f"{DOWNLOAD_BASE_URL}/4.20/{name}"


def test_aarch64_gets_a_section_for_its_kvm_file_only(tmp_path):
    """CloudStack publishes aarch64 for KVM only: another aarch64 file beside it gets no section."""
    names = [naming.export_name("4.20.0", "arm64", fmt) for fmt in ("qcow2", "vhd", "ova")]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    publish.update_checksums(tmp_path, {n: publish.file_digests(tmp_path / n) for n in names})
    publish.write_metadata(tmp_path, "4.20.0", publish.default_base_url("4.20.0"))
    meta = publish.parse_metadata(tmp_path / "metadata.ini")
    assert list(meta) == ["default", "kvm-aarch64"]
    assert meta["kvm-aarch64"]["filename"] == "systemvmtemplate-4.20.0-aarch64-kvm.qcow2.bz2"
    # the newest templateConfig.sh takes the checksum from the one line holding <version>-<arch>-kvm
    lines = (tmp_path / "sha512sum.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines if "4.20.0-aarch64-kvm" in line] == [
        hashlib.sha512(names[0].encode()).hexdigest()
    ]


def test_bad_checksum_line_is_one_clear_error(tmp_path):
    (tmp_path / "sha512sum.txt").write_text("not a checksum line\n")
    with pytest.raises(UserError, match="sha512sum.txt:1: not a checksum line"):
        publish.parse_checksums(tmp_path / "sha512sum.txt")


# The file name part CloudStack's templateConfig.sh and registration match on, per section's hypervisor.
GENERIC = {"kvm": "kvm", "lxc": "kvm", "vmware": "vmware", "xenserver": "xen"}


def test_metadata_reads_as_cloudstack_420_registration_reads_it(tmp_path):
    names = _fake_artifacts(tmp_path)
    publish.update_checksums(tmp_path, {n: publish.file_digests(tmp_path / n) for n in names})
    publish.write_metadata(tmp_path, "4.20.0", publish.default_base_url("4.20.0"))
    meta = publish.parse_metadata(tmp_path / "metadata.ini")
    md5_lines = (tmp_path / "md5sum.txt").read_text().splitlines()
    for hypervisor in ("kvm", "vmware", "xenserver", "lxc"):
        values = meta[hypervisor]  # 4.20.0: one section per lower-case hypervisor name
        assert set(values) >= {"templatename", "checksum", "downloadurl", "filename", "arch"}
        assert values["templatename"] == f"systemvm-{hypervisor}-4.20.0-x86_64"
        assert values["filename"] == values["downloadurl"].rsplit("/", 1)[1]
        generic = f"4.20.0-{values['arch']}-{GENERIC[hypervisor]}"
        # templateConfig.sh: the first field of the md5sum.txt lines holding <ver>-<arch>-<generic>
        listed = [line.split()[0] for line in md5_lines if generic in line]
        assert listed == [values["checksum"]], hypervisor
        # registration: a file in the templates directory whose name holds the generic name, whose MD5
        # (DigestHelper's md5Hex in 4.20) is the checksum
        files = [p for p in tmp_path.iterdir() if generic in p.name and not p.name.endswith(".txt")]
        assert [hashlib.md5(p.read_bytes()).hexdigest() for p in files] == [values["checksum"]], hypervisor
    assert "hyperv" not in meta and "ovm3" not in meta  # no artifact, so no section (CloudStack issue 12077)


def test_verify_listing_checks_the_md5_list_too(tmp_path):
    names = _fake_artifacts(tmp_path)
    publish.update_checksums(tmp_path, {n: publish.file_digests(tmp_path / n) for n in names})
    md5 = publish.parse_checksums(tmp_path / "md5sum.txt")
    md5[names[0]] = "0" * 32
    (tmp_path / "md5sum.txt").write_text(publish.render_checksums(md5))
    assert publish.verify_listing(tmp_path) == [names[0]]


def test_every_published_file_is_listed_and_cloudstack_still_finds_only_its_artifacts(tmp_path):
    names = _fake_artifacts(tmp_path)
    others = [
        "systemvmtemplate-4.20.0-x86_64.manifest.json",
        "systemvmtemplate-4.20.0-x86_64.cdx.json",
        "release-diff.md",
        "release-diff.json",
    ]
    for name in others:
        (tmp_path / name).write_text(f"{name}\n")
    (tmp_path / "systemvmtemplate-4.20.0-x86_64.raw").write_bytes(b"\0" * 512)  # not published
    assert "metadata.ini" not in publish.published_files(tmp_path)
    publish.refresh_listing(
        tmp_path,
        "4.20.0",
        {n: publish.file_digests(tmp_path / n) for n in names + others},
        publish.default_base_url("4.20.0"),
    )
    published = sorted(names + others + ["metadata.ini"])
    assert publish.published_files(tmp_path) == published
    assert publish.unlisted_files(tmp_path) == []
    for listing in ("sha512sum.txt", "md5sum.txt"):
        assert sorted(publish.parse_checksums(tmp_path / listing)) == published
    for tool, listing in (("sha512sum", "sha512sum.txt"), ("md5sum", "md5sum.txt")):
        run = subprocess.run([tool, "-c", "--strict", listing], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    # metadata.ini is what the artifacts alone give: the other files change none of its lines
    artifact_md5 = {n: publish.file_digests(tmp_path / n)["md5"] for n in names}
    expected = publish.render_metadata("4.20.0", artifact_md5, publish.default_base_url("4.20.0"))
    assert (tmp_path / "metadata.ini").read_text() == expected
    md5_lines = (tmp_path / "md5sum.txt").read_text().splitlines()
    for generic in ("4.20.0-x86_64-kvm", "4.20.0-x86_64-vmware", "4.20.0-x86_64-xen"):
        assert len([line for line in md5_lines if generic in line]) == 1, generic
    # a file placed beside them without listing it shows
    (tmp_path / "systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip").write_bytes(b"PK")
    assert publish.unlisted_files(tmp_path) == ["systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip"]
    publish.list_files(tmp_path, [tmp_path / "systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip"])
    assert publish.unlisted_files(tmp_path) == [] and publish.verify_listing(tmp_path) == []


# CloudStack 4.22's registration (SystemVmTemplateRegistration.java, main): the (hypervisor, arch) pairs it
# reads from metadata.ini, looking up "<hv>-<arch>" and falling back on "<hv>" for all but KVM.
REGISTRATION_422 = [("kvm", "x86_64"), ("kvm", "aarch64"), ("vmware", "x86_64"), ("xenserver", "x86_64"),
                    ("hyperv", "x86_64"), ("lxc", "x86_64")]  # fmt: skip
GENERIC_422 = {**GENERIC, "hyperv": "hyperv"}


def _registration_422_section(meta: dict, hypervisor: str, arch: str) -> dict | None:
    section = meta.get(f"{hypervisor}-{arch}")
    if section is None and hypervisor != "kvm":
        section = meta.get(hypervisor)
    return section


def _artifacts_422(directory, archs=("x86_64",)):
    flavour_of = {arch: flavour for flavour, arch in naming.ARCH_OF.items()}
    names = []
    for arch in archs:
        formats = ("qcow2",) if arch == "aarch64" else ("qcow2", "vhd", "ova", "hyperv")  # KVM only on arm
        for fmt in formats:
            name = naming.export_name("4.22.0", flavour_of[arch], fmt)
            (directory / name).write_bytes(f"{arch}-{fmt}".encode())
            names.append(name)
    return names


def test_metadata_ini_of_422_is_sha512_and_reads_as_its_registration_reads_it(tmp_path):
    names = _artifacts_422(tmp_path)
    publish.refresh_listing(
        tmp_path, "4.22.0", {n: publish.file_digests(tmp_path / n) for n in names},
        "https://download.example.org/systemvm/4.22/",
    )  # fmt: skip
    text = (tmp_path / "metadata.ini").read_text()
    assert text.startswith("\n[default]\nversion = 4.22.0.0\n")  # templateConfig.sh's four-part version
    meta = publish.parse_metadata(tmp_path / "metadata.ini")
    assert list(meta) == ["default", "kvm-x86_64", "vmware", "xenserver", "hyperv", "lxc"]  # no [kvm]
    sha_lines = (tmp_path / "sha512sum.txt").read_text().splitlines()
    for hypervisor, arch in REGISTRATION_422:
        if arch != "x86_64":
            continue  # no aarch64 artifact in this release
        values = _registration_422_section(meta, hypervisor, arch)
        assert values is not None, f"4.22's registration finds no section for {hypervisor}-{arch}"
        assert values["templatename"] == f"systemvm-{hypervisor}-4.22.0-x86_64"
        assert values["arch"] == "x86_64" and values["filename"] == values["downloadurl"].rsplit("/", 1)[1]
        assert values["guestos"] == (
            "Other Linux (64-bit)"
            if hypervisor in ("vmware", "xenserver")
            else "Debian GNU/Linux 12 (64-bit)"
        )
        checksum = values["checksum"]
        assert len(checksum) == 128 and not checksum.startswith("{"), "plain SHA-512 hex, no prefix"
        # templateConfig.sh (4.22): the first field of the sha512sum.txt lines holding <ver>-<arch>-<generic>
        generic = f"4.22.0-x86_64-{GENERIC_422[hypervisor]}"
        assert [line.split()[0] for line in sha_lines if generic in line] == [checksum], hypervisor
        # registration: DigestHelper's SHA-512 of the local file equals the checksum exactly
        assert hashlib.sha512((tmp_path / values["filename"]).read_bytes()).hexdigest() == checksum


def test_an_aarch64_kvm_artifact_is_the_kvm_aarch64_section(tmp_path, monkeypatch):
    """A synthetic listing with the arm64 flavour another branch adds: [kvm-aarch64] keyed from ARCH_OF."""
    monkeypatch.setitem(naming.ARCH_OF, "arm64", "aarch64")
    names = _artifacts_422(tmp_path, archs=("x86_64", "aarch64"))
    assert "systemvmtemplate-4.22.0-aarch64-kvm.qcow2.bz2" in names
    publish.update_checksums(tmp_path, {n: publish.file_digests(tmp_path / n) for n in names})
    publish.write_metadata(tmp_path, "4.22.0", publish.default_base_url("4.22.0"))
    meta = publish.parse_metadata(tmp_path / "metadata.ini")
    arm = meta["kvm-aarch64"]
    assert arm == {
        "templatename": "systemvm-kvm-4.22.0-aarch64",
        "checksum": hashlib.sha512(b"aarch64-qcow2").hexdigest(),
        "downloadurl": f"{DOWNLOAD_BASE_URL}/4.22/systemvmtemplate-4.22.0-aarch64-kvm.qcow2.bz2",
        "filename": "systemvmtemplate-4.22.0-aarch64-kvm.qcow2.bz2",
        "arch": "aarch64",
        "guestos": "Debian GNU/Linux 12 (64-bit)",
    }
    for hypervisor, arch in REGISTRATION_422:
        assert _registration_422_section(meta, hypervisor, arch) is not None, f"{hypervisor}-{arch}"
    assert "lxc-aarch64" not in meta and "kvm" not in meta  # LXC is served from the x86_64 file only
    # the same listing as a 4.20 release: MD5, and [kvm] beside [kvm-x86_64] for 4.20.0's registration
    renamed = {}
    for name in names:
        target = tmp_path / "420" / name.replace("4.22.0", "4.20.1")
        target.parent.mkdir(exist_ok=True)
        target.write_bytes((tmp_path / name).read_bytes())
        renamed[target.name] = publish.file_digests(target)
    publish.update_checksums(tmp_path / "420", renamed)
    publish.write_metadata(tmp_path / "420", "4.20.1", publish.default_base_url("4.20.1"))
    old = publish.parse_metadata(tmp_path / "420" / "metadata.ini")
    assert old["default"]["version"] == "4.20.1"
    assert old["kvm-aarch64"]["checksum"] == hashlib.md5(b"aarch64-qcow2").hexdigest()
    assert old["kvm"] == old["kvm-x86_64"] and "kvm-aarch64" in old


def test_metadata_of_an_unsupported_line_is_refused(tmp_path):
    with pytest.raises(UserError, match="4.20 or 4.22"):
        publish.write_metadata(tmp_path, "4.23.0", publish.default_base_url("4.23.0"))
