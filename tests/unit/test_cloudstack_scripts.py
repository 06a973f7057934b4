"""--cloudstack-scripts: reading and checking the tarball or cloudstack-common .deb, before any build.

Tarballs are made with tarfile, .debs with ``dpkg-deb --build`` from a tree made here (one per data.tar
compression dpkg writes), each broken one way; the build's read-back of the baked signature runs on a real
ext4 image made with ``mkfs.ext4 -d``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from systemvm import profile
from systemvm.build import cloudstack_scripts as cs
from systemvm.build.image import check_baked_scripts, check_scripts_signature
from systemvm.errors import UserError

REPO = Path(__file__).resolve().parents[2]
PATCH_SCRIPT = b"#!/bin/bash\necho version:$(md5sum /var/cache/cloud/cloud-scripts.tgz)\n"


def make_tgz(
    path: Path, members: list[tarfile.TarInfo] | None = None, files: dict[str, bytes] | None = None
) -> Path:
    """A gzip tar: ``files`` as regular files (mode 0644), then the raw ``members`` as given."""
    if files is None and members is None:
        files = {"opt/cloud/bin/keystore-setup": b"#!/bin/sh\necho keystore\n", "etc/marker": b"m\n"}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in members or []:
            tar.addfile(info)
    return path


def member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def agent_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("_run.sh", "#!/bin/bash\nexec java -jar agent.jar\n")
    return buf.getvalue()


def make_deb(
    tmp: Path,
    *,
    vms: dict[str, bytes] | None = None,
    version: str = "4.20.0.0~bookworm1",
    compression: str = "xz",
    name: str = "cloudstack-common",
) -> Path:
    """A real .deb built by dpkg-deb from a tree with ``usr/share/cloudstack-common/vms/<vms>``."""
    tree = tmp / f"tree-{name}-{compression}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: tests <t@example.com>\nDescription: test package\n multi-line description\n"
    )
    vms_dir = tree / cs.VMS_DIR
    vms_dir.mkdir(parents=True)
    if vms is None:
        vms = {
            "cloud-scripts.tgz": make_tgz(tmp / "inner.tgz").read_bytes(),
            "agent.zip": agent_zip(),
            "patch-sysvms.sh": PATCH_SCRIPT,
        }
    for file_name, data in vms.items():
        (vms_dir / file_name).write_bytes(data)
    (tree / "usr/share/cloudstack-common/scripts").mkdir(parents=True)
    (tree / "usr/share/cloudstack-common/scripts/other.sh").write_text("#!/bin/sh\n")
    deb = tmp / f"{name}_{compression}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def fails(path: Path, *words: str) -> str:
    with pytest.raises(cs.ScriptsError) as caught:
        cs.load(path)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert ": " in message  # problem, then the fix
    return message


# --- tarballs ----------------------------------------------------------------------------------------


def test_a_good_tarball_is_read_with_its_md5(tmp_path: Path) -> None:
    tgz = make_tgz(tmp_path / "cloud-scripts.tgz")
    scripts = cs.load(tgz)
    assert scripts.kind == "tarball" and scripts.files == 2
    assert scripts.md5 == hashlib.md5(tgz.read_bytes()).hexdigest()
    assert scripts.agent_zip is None and scripts.cloudstack_version is None
    record = scripts.manifest()
    assert record["source"] == "cloud-scripts.tgz" and record["cloud_scripts_md5"] == scripts.md5
    assert record["installed"] == ["/usr/share/cloud/cloud-scripts.tgz"]


def test_dot_slash_names_and_relative_links_are_fine(tmp_path: Path) -> None:
    tgz = make_tgz(
        tmp_path / "t.tgz",
        files={"./opt/cloud/bin/a.sh": b"#!/bin/sh\n"},
        members=[member("./opt/cloud/bin/b.sh", tarfile.SYMTYPE, "a.sh"), member("./etc", tarfile.DIRTYPE)],
    )
    scripts = cs.load(tgz)
    assert scripts.files == 1
    assert cs.member_paths(scripts.tarball) == ["opt/cloud/bin/a.sh", "opt/cloud/bin/b.sh"]


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    fails(tmp_path / "nope.tgz", "nope.tgz", "no such file", "cloud-scripts.tgz")


def test_a_directory_is_not_a_tarball(tmp_path: Path) -> None:
    fails(tmp_path, "not a regular file")


def test_an_uncompressed_tar_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("etc/x")
        tar.addfile(info, io.BytesIO(b""))
    fails(plain, "not a gzip-compressed tar")


def test_gzip_of_something_else_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "notes.tgz"
    bad.write_bytes(gzip.compress(b"these are not tar headers\n" * 40))
    fails(bad, "not a readable gzip tar")


def test_a_truncated_tarball_is_refused(tmp_path: Path) -> None:
    big = {f"opt/cloud/bin/f{i}": os.urandom(20000) for i in range(5)}
    data = make_tgz(tmp_path / "whole.tgz", files=big).read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(data[: len(data) // 2])
    fails(cut, "cut.tgz", "not a readable gzip tar")


@pytest.mark.parametrize(
    ("info", "words"),
    [
        (member("/etc/passwd", tarfile.REGTYPE), ("absolute path", "/etc/passwd")),
        (member("opt/../../etc/shadow", tarfile.REGTYPE), ("'..'",)),
        (member("dev/sda", tarfile.BLKTYPE), ("device node",)),
        (member("dev/tty9", tarfile.CHRTYPE), ("device node",)),
        (member("var/run/pipe", tarfile.FIFOTYPE), ("FIFO",)),
        (member("opt/cloud/bin/l", tarfile.LNKTYPE, "../../etc/shadow"), ("hard link",)),
        (member("opt/cloud/bin/l", tarfile.LNKTYPE, "/etc/shadow"), ("hard link",)),
    ],
    ids=["absolute", "dotdot", "block device", "char device", "fifo", "hardlink dotdot", "hardlink absolute"],
)
def test_unsafe_members_are_refused(tmp_path: Path, info: tarfile.TarInfo, words: tuple[str, ...]) -> None:
    tgz = make_tgz(tmp_path / "bad.tgz", files={"etc/ok": b"1"}, members=[info])
    fails(tgz, "bad.tgz", *words)


def test_a_path_through_the_archives_own_symlink_is_refused(tmp_path: Path) -> None:
    tgz = tmp_path / "escape.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.addfile(member("opt/cloud/esc", tarfile.SYMTYPE, "/"))
        info = tarfile.TarInfo("opt/cloud/esc/etc/shadow")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    fails(tgz, "below a symbolic link")


def test_a_tarball_without_files_is_refused(tmp_path: Path) -> None:
    tgz = make_tgz(tmp_path / "empty.tgz", files={}, members=[member("etc", tarfile.DIRTYPE)])
    fails(tgz, "holds no file")


def test_a_text_file_is_neither(tmp_path: Path) -> None:
    text = tmp_path / "cloud-scripts.tgz"
    text.write_text("404 Not Found\n")
    fails(text, "not a gzip-compressed tar")


# --- .deb --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "none"])
def test_a_cloudstack_common_deb_gives_the_three_files_and_the_version(
    tmp_path: Path, compression: str
) -> None:
    if compression == "zstd" and shutil.which("zstd") is None:
        pytest.fail("zstd (a build tool, host-packages.txt) is missing")
    deb = make_deb(tmp_path, compression=compression)
    scripts = cs.load(deb)
    inner = (tmp_path / "inner.tgz").read_bytes()
    assert scripts.kind == "deb"
    assert scripts.tarball == inner and scripts.md5 == hashlib.md5(inner).hexdigest()
    assert zipfile.ZipFile(io.BytesIO(scripts.agent_zip or b"")).namelist() == ["_run.sh"]
    assert scripts.patch_script == PATCH_SCRIPT
    assert scripts.package == "cloudstack-common"
    assert scripts.cloudstack_version == "4.20.0.0"
    record = scripts.manifest()
    assert record["cloudstack_version"] == "4.20.0.0" and record["package"] == "cloudstack-common"
    assert record["agent_zip_md5"] == hashlib.md5(scripts.agent_zip or b"").hexdigest()
    assert record["installed"] == [
        "/usr/share/cloud/cloud-scripts.tgz",
        "/usr/share/cloud/agent.zip",
        "/usr/share/cloud/patch-sysvms.sh",
    ]


def test_dpkg_deb_agrees_with_our_reading(tmp_path: Path) -> None:
    """An independent reader: dpkg-deb's own extraction gives the same bytes we read."""
    deb = make_deb(tmp_path)
    out = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    scripts = cs.load(deb)
    assert (out / cs.VMS_DIR / "cloud-scripts.tgz").read_bytes() == scripts.tarball
    assert (out / cs.VMS_DIR / "agent.zip").read_bytes() == scripts.agent_zip
    field = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    )
    assert scripts.deb_control["Version"] == field.stdout.strip()


def test_a_deb_without_the_vms_files_is_refused(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, vms={}, name="cloudstack-management")
    message = fails(
        deb, "cloudstack-management", f"{cs.VMS_DIR}/cloud-scripts.tgz", "agent.zip", "cloudstack-common"
    )
    assert "patch-sysvms.sh" in message


def test_a_deb_missing_only_agent_zip_names_that_one(tmp_path: Path) -> None:
    vms = {"cloud-scripts.tgz": make_tgz(tmp_path / "i.tgz").read_bytes(), "patch-sysvms.sh": PATCH_SCRIPT}
    message = fails(make_deb(tmp_path, vms=vms), "agent.zip")
    assert "cloud-scripts.tgz," not in message


def test_a_deb_with_an_unsafe_tarball_is_refused(tmp_path: Path) -> None:
    bad = make_tgz(tmp_path / "bad.tgz", files={"etc/ok": b"1"}, members=[member("/etc/x", tarfile.REGTYPE)])
    vms = {"cloud-scripts.tgz": bad.read_bytes(), "agent.zip": agent_zip(), "patch-sysvms.sh": PATCH_SCRIPT}
    fails(make_deb(tmp_path, vms=vms), "vms/cloud-scripts.tgz", "absolute path")


def test_a_deb_with_a_corrupt_agent_zip_is_refused(tmp_path: Path) -> None:
    vms = {
        "cloud-scripts.tgz": make_tgz(tmp_path / "i.tgz").read_bytes(),
        "agent.zip": b"PK\x03\x04 not really",
        "patch-sysvms.sh": PATCH_SCRIPT,
    }
    fails(make_deb(tmp_path, vms=vms), "agent.zip", "not a zip")


def test_a_truncated_deb_is_refused(tmp_path: Path) -> None:
    data = make_deb(tmp_path).read_bytes()
    cut = tmp_path / "cut.deb"
    cut.write_bytes(data[: len(data) - 200])
    fails(cut, "cut.deb", "download it again")


def test_an_ar_archive_that_is_not_a_deb_is_refused(tmp_path: Path) -> None:
    member_data = b"hello\n"
    header = f"{'notes.txt/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(member_data):<10}`\n".encode()
    ar = tmp_path / "lib.a"
    ar.write_bytes(cs.AR_MAGIC + header + member_data)
    fails(ar, "not a Debian binary package")


def test_package_versions_become_cloudstack_versions() -> None:
    assert cs.cloudstack_version("4.20.0.0~bookworm1") == "4.20.0.0"
    assert cs.cloudstack_version("1:4.19.1.2-1") == "4.19.1.2"
    assert cs.cloudstack_version("4.20.1.0") == "4.20.1.0"


# --- staging and the read-back in the built filesystem --------------------------------------------------


def test_staging_writes_what_the_element_installs(tmp_path: Path) -> None:
    scripts = cs.load(make_deb(tmp_path))
    staged = scripts.stage(tmp_path / "stage")
    assert sorted(p.name for p in staged.iterdir()) == sorted([*cs.DEB_FILES, cs.INFO_NAME, cs.MEMBERS_NAME])
    listed = (staged / cs.MEMBERS_NAME).read_text().splitlines()
    assert listed == ["opt/cloud/bin/keystore-setup", "etc/marker"]
    assert json.loads((staged / cs.INFO_NAME).read_text())["cloud_scripts_md5"] == scripts.md5
    element = REPO / "elements" / cs.ELEMENT
    assert (element / "README.rst").exists()
    assert os.access(element / "install.d" / "70-bake-cloudstack-scripts", os.X_OK)


def _ext4(tmp_path: Path, signature: str, kept: dict[str, bytes] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    tree = tmp_path / "root"
    (tree / "var/cache/cloud").mkdir(parents=True)
    (tree / "usr/share/systemvm/build").mkdir(parents=True)
    (tree / "usr/share/cloud").mkdir(parents=True)
    for name, data in (kept or {}).items():
        (tree / "usr/share/cloud" / name).write_bytes(data)
    (tree / cs.SIGNATURE_PATH.lstrip("/")).write_text(signature + "\n")
    (tree / cs.REPLACED_RECORD.lstrip("/")).write_text("/etc/sysctl.conf\n")
    (tree / cs.BOOT_UNITS_RECORD.lstrip("/")).write_text("cloud-preinit.service\n")
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True, capture_output=True)
    return image


@pytest.mark.parametrize("line", profile.SUPPORTED)
def test_the_build_reads_the_baked_signature_back(tmp_path: Path, line: str) -> None:
    scripts = cs.load(make_tgz(tmp_path / "cloud-scripts.tgz"))
    p = profile.LINES[line]
    record = check_baked_scripts(_ext4(tmp_path, scripts.digest(p.scripts_digest)), scripts, p)
    assert record["cloud_scripts_md5"] == scripts.md5
    assert record["cloud_scripts_sha512"] == hashlib.sha512(scripts.tarball).hexdigest()
    assert record["replaced_image_files"] == ["/etc/sysctl.conf"]
    assert record["boot_units"] == ["cloud-preinit.service"]


@pytest.mark.parametrize(("line", "other"), [("4.20", "sha512"), ("4.22", "md5")])
def test_a_signature_in_the_other_lines_digest_fails_the_build(tmp_path: Path, line: str, other: str) -> None:
    scripts = cs.load(make_tgz(tmp_path / "cloud-scripts.tgz"))
    p = profile.LINES[line]
    with pytest.raises(UserError, match=f"not the {p.scripts_digest} "):
        check_baked_scripts(_ext4(tmp_path, scripts.digest(other)), scripts, p)


@pytest.mark.parametrize("line", profile.SUPPORTED)
def test_every_image_signature_is_the_digest_of_the_kept_scripts(tmp_path: Path, line: str) -> None:
    p = profile.LINES[line]
    tgz = make_tgz(tmp_path / "cloud-scripts.tgz").read_bytes()
    image = _ext4(tmp_path / "good", p.digest(tgz), {"cloud-scripts.tgz": tgz})
    record = check_scripts_signature(image, p)
    assert record["algorithm"] == p.scripts_digest and record["digest"] == p.digest(tgz)
    assert len(record["digest"]) == p.scripts_digest_length
    other = "md5" if p.scripts_digest == "sha512" else "sha512"
    for bad in (hashlib.new(other, tgz).hexdigest(), "", p.digest(tgz) + "  cloud-scripts.tgz"):
        image = _ext4(tmp_path / f"bad-{len(bad)}", bad, {"cloud-scripts.tgz": tgz})
        with pytest.raises(UserError, match="systemvm-scripts-signature"):
            check_scripts_signature(image, p)


# --- the command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "not gzip", "deb without vms"])
def test_invoke_build_with_bad_scripts_says_one_line_exits_1_and_builds_nothing(
    tmp_path: Path, case: str
) -> None:
    """PATH is empty: were the input not checked first, the host check would end the run (exit 2) instead."""
    if case == "missing":
        given = tmp_path / "cloud-scripts.tgz"
    elif case == "not gzip":
        given = tmp_path / "cloud-scripts.tgz"
        given.write_bytes(b"<html>not found</html>\n")
    else:
        given = make_deb(tmp_path, vms={}, name="cloudstack-usage")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    artifacts = tmp_path / "artifacts"
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--flavour", "amd64", "--artifacts", str(artifacts),
         "--cloudstack-scripts", str(given)],
        cwd=REPO, env={**os.environ, "PATH": str(empty)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert str(given) in lines[0]
    assert not artifacts.exists()


def test_a_deb_build_also_checks_agent_zip_and_patch_sysvms_in_the_image(tmp_path: Path) -> None:
    scripts = cs.load(make_deb(tmp_path))
    assert scripts.agent_zip is not None and scripts.patch_script is not None
    whole = {"agent.zip": scripts.agent_zip, "patch-sysvms.sh": scripts.patch_script}
    p = profile.profile_for("4.22.0")
    signature = scripts.digest(p.scripts_digest)
    check_baked_scripts(_ext4(tmp_path / "good", signature, whole), scripts, p)
    with pytest.raises(UserError, match="agent.zip is missing"):
        missing = {"patch-sysvms.sh": scripts.patch_script}
        check_baked_scripts(_ext4(tmp_path / "missing", signature, missing), scripts, p)
    with pytest.raises(UserError, match="patch-sysvms.sh differs"):
        other = {**whole, "patch-sysvms.sh": b"#!/bin/sh\n"}
        check_baked_scripts(_ext4(tmp_path / "other", signature, other), scripts, p)
