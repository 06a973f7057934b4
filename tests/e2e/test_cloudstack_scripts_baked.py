"""``invoke build --version 4.20.0 --cloudstack-scripts``: the CloudStack 4.20 line's build, end to end, and a
tarball made here in the raw image as CloudStack bakes it.

CI's full build is the default line (4.22); this is the one build of the other line, kept cheap: amd64 only
(one package set serves both lines, so the bootstrap cache CI's build warmed is reused), and of the exports
only the OVA (the quickest to write), which is enough to prove the 4.20 contract of what is published:
metadata.ini in 4.20's form (MD5 checksums from md5sum.txt, a three-part version), the MD5 signature,
``/etc/cloudstack-release`` naming 4.20.0 and the manifest's 4.20 profile. The build gets a cloud-scripts.tgz
holding ``opt/cloud/bin/keystore-setup`` (mode 0644 in the tarball: the bake makes it executable, as
CloudStack's build does) and a marker file with a random token; the raw disk's root partition is mounted
read-only (``mount -o loop,offset=...``; no device-mapper needed) to check the tree, the byte-identical copy
in /usr/share/cloud/ and its signature, and the manifest's record. Needs root (the build and the mount).
Run builds one at a time on a shared host: ``flock /tmp/systemvm-build.lock python -m pytest ...``.
The build's and the export's times are printed (``-s``) for the bench.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import naming, profile
from systemvm.export import publish
from tests.e2e.artifacts import root_partition_offset

pytestmark = [pytest.mark.e2e, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
Built = tuple[Path, Path, dict, Path]  # tarball, mounted root, manifest, release directory
FLAVOUR = "amd64"
VERSION = "4.20.0"  # the line CI builds no full release of
LINE = profile.profile_for(VERSION)
TOKEN = secrets.token_hex(8)
KEYSTORE = b"#!/bin/bash\n# stand-in for CloudStack's keystore-setup\necho keystore-setup\n"
MARKER = "opt/cloud/templates/cloudstack-scripts-marker"


# Stand-ins for CloudStack's boot units (what they run does not matter here: the image is not booted).
UNITS = {
    f"etc/systemd/system/{unit}.service": (
        f"[Unit]\nDescription=stand-in for CloudStack's {unit}\n[Service]\nType=oneshot\n"
        "ExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
    ).encode()
    for unit in ("cloud-preinit", "cloud-postinit")
}


def _tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in (
            ("opt/cloud/bin/keystore-setup", KEYSTORE, 0o644),
            (MARKER, f"baked {TOKEN}\n".encode(), 0o644),
            *((unit, text, 0o644) for unit, text in UNITS.items()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 1234, 1234
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """(tarball, mounted root, manifest) of one amd64 4.20 build with the tarball baked in and its OVA."""
    if os.geteuid() != 0:
        pytest.fail("needs root: diskimage-builder and the loop mount")
    work = tmp_path_factory.mktemp("cloudstack-scripts")
    tgz = _tarball(work / "cloud-scripts.tgz")
    artifacts = work / "artifacts"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--flavour", FLAVOUR, "--version", VERSION,
         "--formats", "ova", "--artifacts", str(artifacts), "--cloudstack-scripts", str(tgz)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    print(f"4.20 build with --cloudstack-scripts and its OVA: {time.monotonic() - started:.0f} s")
    log = naming.version_dir(artifacts, VERSION) / "logs" / f"build-{FLAVOUR}.log"
    if done.returncode != 0:  # the log goes with the temporary directory: show its end here
        tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
        pytest.fail(done.stderr[-2000:] + "\n--- end of the build log ---\n" + "\n".join(tail))
    raw = naming.raw_disk(artifacts, VERSION, FLAVOUR)
    manifest = json.loads(naming.manifest(artifacts, VERSION, FLAVOUR).read_text())
    print(f"  of which the build {manifest['build_seconds']} s (bootstrap {manifest['bootstrap']})")
    root = work / "root"
    root.mkdir()
    subprocess.run(
        ["mount", "-o", f"loop,offset={root_partition_offset(raw)},ro,noload", str(raw), str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield tgz, root, manifest, naming.version_dir(artifacts, VERSION)
    finally:
        subprocess.run(["umount", str(root)], check=False)


def test_the_tree_is_unpacked_over_root(built: Built) -> None:
    _, root, _, _ = built
    keystore = root / "opt/cloud/bin/keystore-setup"
    assert keystore.read_bytes() == KEYSTORE
    st = keystore.stat()
    assert st.st_mode & 0o111, "CloudStack's build makes /opt/cloud/bin/* executable"
    assert (st.st_uid, st.st_gid) == (0, 0), "baked files belong to root, not to the tarball's owner"
    assert (root / MARKER).read_text() == f"baked {TOKEN}\n"


def test_the_tarball_and_its_md5_are_where_the_handshake_looks(built: Built) -> None:
    tgz, root, manifest, _ = built
    assert (root / "usr/share/cloud/cloud-scripts.tgz").read_bytes() == tgz.read_bytes()
    md5 = hashlib.md5(tgz.read_bytes()).hexdigest()  # 4.20's digest (4.22's would be SHA-512)
    assert (root / "var/cache/cloud/cloud-scripts-signature").read_text() == md5 + "\n"
    assert (manifest["scripts_signature"]["algorithm"], manifest["scripts_signature"]["digest"]) == (
        "md5",
        md5,
    )
    assert (root / "opt/cloud/lib/SCRIPTS_DIGEST").read_text() == "md5\n"  # what the guest's patch step uses


def test_the_image_is_a_420_one(built: Built) -> None:
    _, root, manifest, _ = built
    assert manifest["cloudstack_profile"] == LINE.record()
    assert (root / "etc/cloudstack-release").read_text().split()[:3] == ["Cloudstack", "Release", VERSION]
    assert (root / "opt/cloud/lib/CLOUDSTACK_LINE").read_text() == "4.20\n"
    # CloudStack 4.20.0's own build installs cloud-init too and leaves it off: one package set for both lines
    assert "cloud-init" in manifest["packages"] and (root / "etc/cloud/cloud-init.disabled").exists()


def test_metadata_ini_is_in_420s_form(built: Built) -> None:
    """MD5 checksums from md5sum.txt (what 4.20's templateConfig.sh reads and its registration compares) and a
    three-part version; the OVA's section is there with the MD5 of the published file."""
    directory = built[3]
    meta = publish.parse_metadata(directory / "metadata.ini")
    assert meta["default"]["version"] == VERSION
    ova = naming.export_name(VERSION, FLAVOUR, "ova")
    assert meta["vmware"]["filename"] == ova
    assert meta["vmware"]["templatename"] == f"systemvm-vmware-{VERSION}-x86_64"
    md5 = hashlib.md5((directory / ova).read_bytes()).hexdigest()
    assert meta["vmware"]["checksum"] == md5 == publish.parse_checksums(directory / "md5sum.txt")[ova]
    assert publish.verify_listing(directory) == [] and publish.unlisted_files(directory) == []


def test_the_manifest_records_what_was_baked(built: Built) -> None:
    tgz, root, manifest, _ = built
    record = manifest["cloudstack_scripts"]
    assert record["source"] == "cloud-scripts.tgz" and record["kind"] == "tarball"
    assert record["cloud_scripts_md5"] == hashlib.md5(tgz.read_bytes()).hexdigest()
    assert record["cloud_scripts_files"] == 2 + len(UNITS)
    assert "/opt/cloud/bin/keystore-setup" not in record["replaced_image_files"]
    assert "systemvm-cloudstack-scripts" in manifest["elements"]
    baked = json.loads((root / "usr/share/cloud/cloudstack-scripts.json").read_text())
    assert baked["cloud_scripts_md5"] == record["cloud_scripts_md5"]


def test_the_image_directories_kept_their_modes(built: Built) -> None:
    _, root, _, _ = built
    assert oct(root.stat().st_mode & 0o7777) == oct(0o755)
    assert (root / "bin").is_symlink() and (root / "lib").is_symlink(), "merged /usr links survive"


def test_cloudstacks_boot_units_are_in_charge(built: Built) -> None:
    """As CloudStack's own template boots: its units enabled, the image's own boot steps stood down."""
    _, root, manifest, _ = built
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("cloud-preinit.service", "cloud-postinit.service"):
        assert (wants / unit).is_symlink(), f"{unit} is not enabled"
    for ours in ("systemvm-postinit.service", "cloud-early-config.service"):
        assert not (wants / ours).exists(), f"{ours} is still enabled beside CloudStack's units"
    assert manifest["cloudstack_scripts"]["boot_units"] == ["cloud-preinit.service", "cloud-postinit.service"]
    assert (root / "etc/systemd/system/sysinit.target.wants/ssh-host-keys.service").is_symlink()
