"""The systemvm-cloudstack-scripts element on the CI build's image, without a build of its own.

A build with ``--cloudstack-scripts`` costs minutes of the CI machine's two cores (see
test_cloudstack_scripts_baked.py); this runs the element's install.d step as diskimage-builder would, in
a chroot of the amd64 image CI already built (``SYSTEMVM_ARTIFACTS``, mounted read-only under an
overlay), with inputs staged by the build's own code (a tarball, then a cloudstack-common .deb made with
dpkg-deb). It checks what the element promises: the tree over /, executable bits, root ownership,
directories and merged-/usr links kept, the byte-identical tarball and its signature in each CloudStack
line's digest (MD5 for 4.20, SHA-512 for 4.22), agent.zip and
patch-sysvms.sh in /usr/share/cloud, the record of replaced image files. Needs root; skips only when
``SYSTEMVM_ARTIFACTS`` is unset.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import profile
from systemvm.build import cloudstack_scripts as cs
from tests.e2e.image_overlay import amd64_image, overlay

pytestmark = [pytest.mark.e2e, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
ELEMENT = REPO / "elements" / cs.ELEMENT
KEYSTORE = b"#!/bin/bash\necho keystore-setup\n"


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _tarball(path: Path) -> Path:
    """CloudStack-like: directory entries with their own modes, a program stored 0644, a unit stored 0755,
    a file the image already has (sysctl.conf), and a member below /lib (a merged-/usr link)."""
    with tarfile.open(path, "w:gz") as tar:
        for name in ("etc", "etc/systemd", "etc/systemd/system", "opt", "opt/cloud", "opt/cloud/bin", "lib"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o775
            tar.addfile(info)
        for name, data, mode in (
            ("opt/cloud/bin/keystore-setup", KEYSTORE, 0o644),
            ("etc/systemd/system/cloud-test.service", b"[Service]\nExecStart=/bin/true\n", 0o755),
            ("etc/sysctl.conf", b"net.ipv4.ip_forward = 1\n", 0o644),
            ("lib/cloudstack-test-marker", b"through the /lib link\n", 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 1000, 1000
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with amd64_image(tmp_path_factory) as lower:
        yield lower


def bake(root: Path, scripts: cs.CloudStackScripts, work: Path, line: str = "4.22") -> str:
    """The element's two phases as diskimage-builder runs them: extra-data.d outside the chroot, then
    install.d inside it, with the hooks directory bind-mounted read-only at /tmp/in_target.d (as
    diskimage-builder's img-functions mounts it)."""
    hooks = work / "hooks"
    hooks.mkdir()
    staged = scripts.stage(work / "staged")
    env = {**os.environ, "SYSTEMVM_CLOUDSTACK_SCRIPTS": str(staged), "TMP_HOOKS_PATH": str(hooks)}
    subprocess.run([str(ELEMENT / "extra-data.d/50-copy-cloudstack-scripts")], env=env, check=True)
    shutil.copy(ELEMENT / "install.d/70-bake-cloudstack-scripts", hooks / "bake")
    target = root / "tmp/in_target.d"
    target.mkdir(parents=True)
    _run("mount", "--bind", str(hooks), str(target))
    try:
        _run("mount", "-o", "remount,ro,bind", str(hooks), str(target))
        chroot_env = {**os.environ, **profile.LINES[line].build_environment()}
        done = subprocess.run(
            ["chroot", str(root), "/tmp/in_target.d/bake"], capture_output=True, text=True, env=chroot_env
        )
    finally:
        subprocess.run(["umount", str(target)], check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("line", profile.SUPPORTED)
def test_a_tarball_is_baked_as_cloudstack_bakes_it(image_root: Path, tmp_path: Path, line: str) -> None:
    tgz = _tarball(tmp_path / "cloud-scripts.tgz")
    scripts = cs.load(tgz)
    digest = profile.LINES[line].scripts_digest
    before = (image_root / "etc").stat()
    with overlay(image_root, tmp_path) as root:
        out = bake(root, scripts, tmp_path, line)
        assert f"{digest}sum {scripts.digest(digest)}" in out
        keystore = root / "opt/cloud/bin/keystore-setup"
        assert keystore.read_bytes() == KEYSTORE and keystore.stat().st_mode & 0o111
        assert (keystore.stat().st_uid, keystore.stat().st_gid) == (0, 0)
        assert not (root / "etc/systemd/system/cloud-test.service").stat().st_mode & 0o111
        assert (root / "etc/sysctl.conf").read_bytes() == b"net.ipv4.ip_forward = 1\n"
        etc = (root / "etc").stat()
        assert (etc.st_mode, etc.st_uid) == (before.st_mode, before.st_uid), "existing directories unchanged"
        assert (root / "lib").is_symlink() and (root / "usr/lib/cloudstack-test-marker").exists()
        assert (root / "usr/share/cloud/cloud-scripts.tgz").read_bytes() == tgz.read_bytes()
        signature = (root / "var/cache/cloud/cloud-scripts-signature").read_text()
        assert signature == hashlib.new(digest, tgz.read_bytes()).hexdigest() + "\n"
        replaced = (root / cs.REPLACED_RECORD.lstrip("/")).read_text().splitlines()
        assert "/etc/sysctl.conf" in replaced and "/opt/cloud/bin/keystore-setup" not in replaced
        assert not (root / "usr/share/cloud/agent.zip").exists()


def test_a_deb_also_leaves_agent_zip_and_patch_sysvms(image_root: Path, tmp_path: Path) -> None:
    tree = tmp_path / "deb"
    vms = tree / cs.VMS_DIR
    vms.mkdir(parents=True)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(
        "Package: cloudstack-common\nVersion: 4.20.0.0\nArchitecture: all\nMaintainer: t <t@example.com>\n"
        "Description: test\n"
    )
    _tarball(vms / "cloud-scripts.tgz")
    with zipfile.ZipFile(vms / "agent.zip", "w") as z:
        z.writestr("_run.sh", "#!/bin/bash\n")
    (vms / "patch-sysvms.sh").write_text("#!/bin/bash\necho version:x\n")
    _run("dpkg-deb", "--root-owner-group", "--build", str(tree), str(tmp_path / "common.deb"))
    scripts = cs.load(tmp_path / "common.deb")
    with overlay(image_root, tmp_path) as root:
        bake(root, scripts, tmp_path)
        assert (root / "usr/share/cloud/agent.zip").read_bytes() == (vms / "agent.zip").read_bytes()
        patch = root / "usr/share/cloud/patch-sysvms.sh"
        assert patch.read_bytes() == (vms / "patch-sysvms.sh").read_bytes() and patch.stat().st_mode & 0o111
        for name in cs.DEB_FILES:  # the management server's delivery place stays empty
            assert not (root / "var/cache/cloud" / name).exists()
        info = json.loads((root / "usr/share/cloud/cloudstack-scripts.json").read_text())
        assert info["cloudstack_version"] == "4.20.0.0" and info["package"] == "cloudstack-common"
